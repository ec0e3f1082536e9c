"""Alerts: open ones from Redis (kept by the stream jobs), history from ClickHouse, and acknowledgement.

An acknowledgement is stored in the Redis hash ``alert_acks`` (alert id -> ``{"by", "at", "note"}``) and
broadcast on the alerts channel as the Alert JSON plus ``"event": "ack"`` and ``"ack": {...}``, so every
API process and every dashboard sees it.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from fastapi import APIRouter, Body, Depends, HTTPException, Query

from dashboard_api import live
from dashboard_api.auth import require_operator
from dashboard_api.deps import HistoryDep, LiveDep, NamesDep, RedisDep
from dashboard_api.models import Ack, AckRequest, AckResult, AlertList, AlertOut
from dashboard_api.params import ID_PATTERN, AlertIdPath, TimeRange, time_range, to_ms
from history import queries
from iotp.schema import NAME_PATTERN, Severity

router = APIRouter(prefix="/api/alerts", tags=["alerts"])
RULE_PATTERN = NAME_PATTERN


@router.get("", response_model=AlertList, summary="Open alerts (live, from Redis), newest first")
async def list_open_alerts(
    src: LiveDep,
    device_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    severity: Annotated[Severity | None, Query()] = None,
    rule: Annotated[str | None, Query(pattern=RULE_PATTERN)] = None,
    acked: Annotated[bool | None, Query(description="only acknowledged (true) / unacknowledged (false)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AlertList:
    alerts = [
        a
        for a in await live.open_alerts(src)
        if (device_id is None or a.device_id == device_id)
        and (severity is None or a.severity == severity)
        and (rule is None or a.rule == rule)
        and (acked is None or (a.ack is not None) == acked)
    ]
    return AlertList(total=len(alerts), items=alerts[offset : offset + limit])


@router.get("/history", response_model=AlertList, summary="Alert events from ClickHouse, with filters")
async def alert_history(
    src: LiveDep,
    history: HistoryDep,
    tr: Annotated[TimeRange, Depends(time_range)],
    device_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    rule: Annotated[str | None, Query(pattern=RULE_PATTERN)] = None,
    severity: Annotated[Severity | None, Query()] = None,
    state: Annotated[Literal["open", "resolved"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=100000)] = 0,
) -> AlertList:
    rows = await history.run(
        queries.alert_history,
        tr.start,
        tr.end,
        device_id=device_id,
        rule=rule,
        severity=severity,
        state=state,
        limit=limit,
        offset=offset,
    )
    alerts = []
    for row in rows:
        row = dict(row)
        for name in ("first_seen", "last_seen", "resolved_at"):
            if name in row:
                row[name] = to_ms(row[name])
        alerts.append(AlertOut.model_validate(row))
    acks = await live.load_acks(src, [a.alert_id for a in alerts])
    for alert in alerts:
        alert.ack = acks.get(alert.alert_id)
    return AlertList(total=len(alerts), items=alerts)


@router.post(
    "/{alert_id}/ack",
    response_model=AckResult,
    summary="Acknowledge an open alert (operator role)",
    dependencies=[Depends(require_operator)],
    responses={403: {"description": "the token is not an operator's"}, 404: {"description": "no open alert"}},
)
async def acknowledge(
    redis: RedisDep, names: NamesDep, alert_id: AlertIdPath, body: Annotated[AckRequest | None, Body()] = None
) -> AckResult:
    """Stores the ack (first ack wins; a repeated ack returns the stored one with ``created: false``) and
    broadcasts it on the alerts channel."""
    body = body or AckRequest()
    raw = await redis.hget(names.open_alerts, alert_id)
    if raw is None:
        raise HTTPException(404, f"no open alert {alert_id!r}")
    ack = Ack(by=body.by, at=live.now_ms(), note=body.note)
    created = bool(await redis.hsetnx(names.alert_acks, alert_id, ack.model_dump_json()))
    if not created:
        return AckResult(
            alert_id=alert_id,
            ack=Ack.model_validate_json(cast(bytes, await redis.hget(names.alert_acks, alert_id))),  # set: hsetnx lost
            created=False,
        )
    alert = AlertOut.model_validate_json(raw)
    await redis.publish(names.channel_alerts, live.ack_event(alert, ack))
    return AckResult(alert_id=alert_id, ack=ack, created=True)
