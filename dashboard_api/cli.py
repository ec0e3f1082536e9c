"""``iotp api``."""

from __future__ import annotations

from typing import Annotated

import typer


def api(
    host: Annotated[str | None, typer.Option(help="Bind address (default IOTP_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default IOTP_API_PORT)")] = None,
) -> None:
    import logging

    import uvicorn

    from dashboard_api.app import create_app
    from iotp import gc_tuning
    from iotp.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    application = create_app(settings)
    gc_tuning.tune(settings)
    uvicorn.run(
        application,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        ws="websockets-sansio",
        ws_ping_interval=settings.api_ws_ping_s,
        ws_ping_timeout=settings.api_ws_ping_s,
    )
