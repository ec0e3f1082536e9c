"""Fleet analytics from ClickHouse (History's queries, run in a worker thread)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from dashboard_api.models import FleetStat, FleetStats, TopDevice, TopDevices
from dashboard_api.params import METRIC_PATTERN, TYPE_PATTERN, TimeRange, time_range
from history import queries

router = APIRouter(prefix="/api/analytics", tags=["analytics"])
NOT_READY = {501: {"description": "the History query is not available in this build"}}


def history_query(name: str):
    fn = getattr(queries, name, None)
    if fn is None:
        raise HTTPException(501, f"history query {name!r} is not available in this build")
    return fn


@router.get(
    "/fleet",
    response_model=FleetStats,
    responses=NOT_READY,
    summary="Per device type x metric: count, mean, percentiles, min, max",
)
async def fleet_stats(
    request: Request,
    tr: Annotated[TimeRange, Depends(time_range)],
    device_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN)] = None,
    metric: Annotated[str | None, Query(pattern=METRIC_PATTERN)] = None,
) -> FleetStats:
    fn = history_query("fleet_stats")
    rows = await asyncio.to_thread(
        fn,
        request.app.state.clickhouse,
        request.app.state.settings.clickhouse_database,
        tr.start,
        tr.end,
        device_type=device_type,
        metric=metric,
    )
    return FleetStats(start=tr.start_ms, end=tr.end_ms, items=[FleetStat(**r) for r in rows])


@router.get(
    "/top",
    response_model=TopDevices,
    responses=NOT_READY,
    summary="Devices ranked by alert count or by deviation from their type's mean",
)
async def top_devices(
    request: Request,
    tr: Annotated[TimeRange, Depends(time_range)],
    by: Annotated[Literal["alerts", "deviation"], Query()] = "alerts",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    device_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN)] = None,
) -> TopDevices:
    fn = history_query("top_devices")
    rows = await asyncio.to_thread(
        fn,
        request.app.state.clickhouse,
        request.app.state.settings.clickhouse_database,
        tr.start,
        tr.end,
        by=by,
        limit=limit,
        device_type=device_type,
    )
    return TopDevices(start=tr.start_ms, end=tr.end_ms, by=by, items=[TopDevice(**r) for r in rows])
