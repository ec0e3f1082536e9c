"""Liveness and readiness probes (no token needed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dashboard_api.deps import ClickHouseDep, HubDep, RedisDep

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(redis: RedisDep, clickhouse: ClickHouseDep, hub: HubDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(redis.ping(), 2)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc}"
    try:
        await asyncio.wait_for(asyncio.to_thread(clickhouse.command, "SELECT 1"), 5)
        checks["clickhouse"] = "ok"
    except Exception as exc:
        checks["clickhouse"] = f"error: {exc}"
    checks["pubsub"] = "ok" if hub.ready.is_set() else "not subscribed"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
