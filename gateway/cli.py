"""``iotp gateway``."""

from __future__ import annotations

from typing import Annotated

import typer


def gateway(
    client_id: Annotated[str | None, typer.Option(help="MQTT client id (stable: persistent session)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port; 0 disables")] = None,
) -> None:
    import asyncio
    import logging

    from prometheus_client import start_http_server

    from gateway.forwarder import Gateway
    from iotp.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    port = settings.gateway_metrics_port if metrics_port is None else metrics_port
    if port:
        start_http_server(port, addr="127.0.0.1")
    asyncio.run(Gateway(settings, client_id).run())
