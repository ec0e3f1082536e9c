"""Fleet and device endpoints: latest state from Redis, history from ClickHouse."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from dashboard_api import live
from dashboard_api.deps import HistoryDep, LiveDep
from dashboard_api.models import DeviceList, DeviceState, DeviceStatus, FleetSummary, HistoryPoint, HistorySeries
from dashboard_api.params import METRIC_PATTERN, TYPE_PATTERN, DeviceIdPath, TimeRange, time_range, to_ms
from history import queries

router = APIRouter(prefix="/api", tags=["devices"])


@router.get("/devices", response_model=DeviceList, summary="Fleet list with filters and pagination")
async def list_devices(
    src: LiveDep,
    device_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN, description="device type")] = None,
    status: Annotated[DeviceStatus | None, Query(description="online|offline")] = None,
    has_alerts: Annotated[
        bool | None, Query(description="only devices with (true) / without (false) open alerts")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeviceList:
    """Devices sorted by id. ``total`` counts the devices that match the filters."""
    ids = await live.device_ids(src.redis, src.names)
    if device_type is None and status is None and has_alerts is None:
        counts = await live.open_alert_counts(src)
        items = await live.load_devices(src, ids[offset : offset + limit], counts)
        return DeviceList(total=len(ids), limit=limit, offset=offset, items=items)
    counts = await live.open_alert_counts(src)
    matching = [
        d
        for d in await live.load_devices(src, ids, counts)
        if (device_type is None or d.device_type == device_type)
        and (status is None or d.status == status)
        and (has_alerts is None or (d.open_alerts > 0) == has_alerts)
    ]
    return DeviceList(total=len(matching), limit=limit, offset=offset, items=matching[offset : offset + limit])


@router.get("/fleet/summary", response_model=FleetSummary, summary="Counts by status and type")
async def get_fleet_summary(src: LiveDep) -> FleetSummary:
    return await live.fleet_summary(src)


@router.get(
    "/devices/{device_id}",
    response_model=DeviceState,
    summary="A device's latest state",
    responses={404: {"description": "unknown device"}},
)
async def get_device(src: LiveDep, device_id: DeviceIdPath) -> DeviceState:
    counts = await live.open_alert_counts(src)
    found = await live.load_devices(src, [device_id], counts)
    if not found:
        raise HTTPException(404, f"device {device_id!r} not found")
    return found[0]


@router.get(
    "/devices/{device_id}/history",
    response_model=HistorySeries,
    summary="A metric's history, downsampled to at most max_points",
)
async def get_history(
    history: HistoryDep,
    device_id: DeviceIdPath,
    metric: Annotated[str, Query(pattern=METRIC_PATTERN, description="metric name, e.g. temperature")],
    tr: Annotated[TimeRange, Depends(time_range)],
    resolution: Annotated[
        Literal["auto", "raw", "1m", "1h"],
        Query(description="auto picks raw, 1-minute or 1-hour buckets so that at most max_points come back"),
    ] = "auto",
    max_points: Annotated[int, Query(ge=10, le=10000)] = 1000,
) -> HistorySeries:
    result = await history.run(
        queries.device_series,
        device_id,
        metric,
        tr.start,
        tr.end,
        max_points=max_points,
        resolution=resolution,
    )
    res, points = result["resolution"], result["points"]
    return HistorySeries(
        device_id=device_id,
        metric=metric,
        start=tr.start_ms,
        end=tr.end_ms,
        resolution=res,
        points=[
            HistoryPoint(ts=to_ms(p["ts"]), value=p["value"], min=p.get("min"), max=p.get("max"), count=p.get("count"))
            for p in points
        ],
    )
