"""Fleet analytics from ClickHouse (History's queries, run in a worker thread)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from dashboard_api.deps import HistoryDep
from dashboard_api.models import FleetStat, FleetStats, TopDevice, TopDevices
from dashboard_api.params import METRIC_PATTERN, TYPE_PATTERN, TimeRange, time_range
from history import queries

router = APIRouter(prefix="/api/analytics", tags=["analytics"])


@router.get(
    "/fleet",
    response_model=FleetStats,
    summary="Per device type x metric: count, mean, percentiles, min, max",
)
async def fleet_stats(
    history: HistoryDep,
    tr: Annotated[TimeRange, Depends(time_range)],
    device_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN)] = None,
    metric: Annotated[str | None, Query(pattern=METRIC_PATTERN)] = None,
) -> FleetStats:
    rows = await history.run(
        queries.fleet_stats,
        tr.start,
        tr.end,
        device_type=device_type,
        metric=metric,
    )
    return FleetStats(start=tr.start_ms, end=tr.end_ms, items=[FleetStat(**r) for r in rows])


@router.get(
    "/top",
    response_model=TopDevices,
    summary="Devices ranked by alert count or by deviation from their type's mean",
)
async def top_devices(
    history: HistoryDep,
    tr: Annotated[TimeRange, Depends(time_range)],
    by: Annotated[Literal["alerts", "deviation"], Query()] = "alerts",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    device_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN)] = None,
) -> TopDevices:
    rows = await history.run(
        queries.top_devices,
        tr.start,
        tr.end,
        by=by,
        limit=limit,
        device_type=device_type,
    )
    return TopDevices(start=tr.start_ms, end=tr.end_ms, by=by, items=[TopDevice(**r) for r in rows])
