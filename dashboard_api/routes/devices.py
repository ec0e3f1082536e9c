"""Fleet and device endpoints: latest state from Redis, history from ClickHouse."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request

from dashboard_api.models import DeviceList, DeviceState, HistoryPoint, HistorySeries, parse_device_hash
from history.queries import device_history

router = APIRouter(prefix="/api", tags=["devices"])
DeviceIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                   description="device id")]


@router.get("/devices", response_model=DeviceList)
async def list_devices(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       offset: Annotated[int, Query(ge=0)] = 0) -> DeviceList:
    redis = request.app.state.redis
    names = request.app.state.names
    total = await redis.zcard(names.fleet_index)
    ids = await redis.zrange(names.fleet_index, offset, offset + limit - 1)
    async with redis.pipeline(transaction=False) as pipe:
        for device_id in ids:
            pipe.hgetall(names.device_key(device_id.decode()))
        hashes = await pipe.execute()
    return DeviceList(total=total, items=[parse_device_hash(h) for h in hashes if h])


@router.get("/devices/{device_id}", response_model=DeviceState)
async def get_device(request: Request, device_id: DeviceIdPath) -> DeviceState:
    raw = await request.app.state.redis.hgetall(request.app.state.names.device_key(device_id))
    if not raw:
        raise HTTPException(404, f"device {device_id!r} not found")
    return parse_device_hash(raw)


@router.get("/devices/{device_id}/history", response_model=HistorySeries)
async def get_history(
    request: Request,
    device_id: DeviceIdPath,
    metric: Annotated[str, Query(pattern=r"^[a-z][a-z0-9_]{0,31}$")],
    start: Annotated[datetime | None, Query(description="ISO time; default end - 1 h")] = None,
    end: Annotated[datetime | None, Query(description="ISO time; default now")] = None,
) -> HistorySeries:
    end = end or datetime.now(UTC)
    start = start or datetime.fromtimestamp(end.timestamp() - 3600, UTC)
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(422, "start and end need a timezone (e.g. 2026-01-01T00:00:00Z)")
    if start >= end:
        raise HTTPException(422, "start must be before end")
    settings = request.app.state.settings
    points = await asyncio.to_thread(device_history, request.app.state.clickhouse,
                                     settings.clickhouse_database, device_id, metric, start, end)
    return HistorySeries(device_id=device_id, metric=metric, start=int(start.timestamp() * 1000),
                         end=int(end.timestamp() * 1000),
                         points=[HistoryPoint(ts=p["ts"], value=p["value"]) for p in points])
