"""The FastAPI application: REST under /api, WebSocket at /ws, the page at /, probes under /health.

In embedded ClickHouse mode this process also runs the Kafka -> ClickHouse sink, because one process
owns the chDB data directory (the API reads what the sink writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from dashboard_api.auth import install_log_redaction, parse_tokens, require_token
from dashboard_api.deps import TokensDep
from dashboard_api.hub import Hub
from dashboard_api.live import StatsSampler, run_publisher
from dashboard_api.metrics import ApiMetrics, RequestMetrics
from dashboard_api.routes import alerts, analytics, devices, health, pipeline, profiles, session, ws
from history.client import get_client
from history.engine_priority import start_keeping_engine_niced
from history.migrations import migrate
from history.sink import ClickHouseSink
from iotp.settings import Settings, get_settings
from iotp.topics import redis_names

log = logging.getLogger("iotp.api")
STATIC = Path(__file__).parent / "static"
DESCRIPTION = """Live dashboard API. Every `/api` endpoint needs an API token as `Authorization: Bearer <token>`
or `X-API-Token: <token>` (or the page's session cookie from `/auth/login`), and so does the WebSocket `/ws`
handshake. Tokens have roles: `viewer` reads, `operator` also acknowledges alerts and changes configuration
(`IOTP_API_TOKEN` is an operator token, dev default `dev-token`; `IOTP_API_TOKENS` adds more). 401 = no or
wrong token, 403 = role too low. See docs/security.md and, for the WebSocket protocol, docs/dashboard.md."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_log_redaction()  # here: uvicorn has configured its loggers by now
        names = redis_names(settings)
        app.state.redis = aioredis.from_url(settings.redis_url)
        app.state.names = names
        app.state.clickhouse = await asyncio.to_thread(get_client, settings)
        await asyncio.to_thread(migrate, app.state.clickhouse, settings.clickhouse_database, settings)
        app.state.hub = Hub(
            app.state.redis,
            {
                "readings": names.channel_readings,
                "aggregates": names.channel_aggregates,
                "alerts": names.channel_alerts,
            },
            maxsize=settings.api_ws_queue,
            coalesce_after=settings.api_ws_coalesce_after,
        )
        app.state.sampler = StatsSampler(app.state.redis, names)
        tasks = [
            asyncio.create_task(app.state.hub.run(), name="hub"),
            asyncio.create_task(run_publisher(app), name="publisher"),
        ]
        stop = asyncio.Event()
        app.state.sink = None
        niced = start_keeping_engine_niced(settings)
        if niced is not None:
            tasks.append(niced)
        if settings.api_embedded_sink:
            app.state.sink = ClickHouseSink(settings, app.state.clickhouse, redis=app.state.redis)
            tasks.append(asyncio.create_task(app.state.sink.run(stop), name="sink"))
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                if task.get_name() != "sink":
                    task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 15)
            await app.state.redis.aclose()

    app = FastAPI(title="IoT telemetry pipeline", version="0.1.0", lifespan=lifespan, description=DESCRIPTION)
    app.state.settings = settings
    app.state.tokens = parse_tokens(settings)  # a malformed IOTP_API_TOKENS fails here, at start
    app.include_router(health.router)
    app.include_router(session.router)
    for module in (devices, analytics, alerts, pipeline, profiles):
        app.include_router(
            module.router,
            dependencies=[Depends(require_token)],
            responses={401: {"description": "missing or wrong API token"}},
        )
    app.include_router(ws.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.api_metrics:
        _add_metrics(app)

    @app.exception_handler(ClickHouseError)
    async def clickhouse_failed(request: Request, exc: ClickHouseError) -> JSONResponse:
        log.warning("ClickHouse query for %s failed: %s", request.url.path, exc)
        return JSONResponse({"detail": "history store query failed; see the API log"}, status_code=503)

    @app.get("/", include_in_schema=False)
    async def index(request: Request, tokens: TokensDep, token: str | None = None) -> Response:
        if token is not None:  # the link `iotp up` prints: becomes the session cookie, leaves the URL
            return session.token_link_redirect(request, tokens, token)
        return FileResponse(STATIC / "index.html")

    return app


def _add_metrics(app: FastAPI) -> None:
    """``GET /metrics`` (Prometheus text format, no token: counts only) and the request counting middleware."""
    metrics = ApiMetrics(app.state)
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:  # async: collected on the event loop, next to the hub
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
