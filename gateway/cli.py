"""``iotp gateway``."""

from __future__ import annotations

from typing import Annotated

import typer


def gateway(
    client_id: Annotated[
        str | None,
        typer.Option(help="MQTT client id; keep it STABLE per instance (its persistent session survives restarts)"),
    ] = None,
    index: Annotated[
        int,
        typer.Option(
            min=0, help="Instance index when several gateways run: default client id iotp-gateway-<host>-<index>"
        ),
    ] = 0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus /metrics port (default: IOTP_GATEWAY_METRICS_PORT + index); 0 disables"),
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="Address of the /metrics endpoint (default: IOTP_METRICS_HOST)")
    ] = None,
    use_uvloop: Annotated[bool, typer.Option("--uvloop/--no-uvloop", help="Run the event loop on uvloop")] = True,
    redis_stats: Annotated[
        bool, typer.Option("--redis-stats/--no-redis-stats", help="Publish counters to the Redis stats hash")
    ] = True,
) -> None:
    import asyncio
    import logging

    from prometheus_client import start_http_server

    from gateway.forwarder import Gateway, default_client_id
    from infra.mqtt_auth import with_local_credentials
    from iotp import gc_tuning
    from iotp.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("iotp.gateway")
    # by hand against the local stack: its gateway account (under supervisord it comes in IOTP_MQTT_*)
    settings = with_local_credentials(get_settings(), "gateway")
    port = (
        (settings.gateway_metrics_port + index if settings.gateway_metrics_port else 0)
        if metrics_port is None
        else metrics_port
    )
    metrics_host = metrics_host or settings.metrics_host
    if port:
        try:
            start_http_server(port, addr=metrics_host)
            log.info("metrics at http://%s:%d/metrics", metrics_host, port)
        except OSError as exc:  # a busy port must not stop forwarding
            log.error("cannot serve /metrics on %s:%d (%s); continuing without metrics", metrics_host, port, exc)
    gw = Gateway(settings, client_id or default_client_id(index), redis_stats=redis_stats)
    gc_tuning.tune(settings)
    if use_uvloop:
        try:
            import uvloop

            code = uvloop.run(gw.run())
        except ImportError:
            code = asyncio.run(gw.run())
    else:
        code = asyncio.run(gw.run())
    raise typer.Exit(code or 0)
