"""``iotp sink``: the Kafka -> ClickHouse sink as its own process (for ClickHouse server mode; in
embedded mode the API process runs it, because one process owns the chDB directory)."""

from __future__ import annotations

from typing import Annotated

import typer


def sink(
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port (default: IOTP_SINK_METRICS_PORT); 0 disables")
    ] = None,
) -> None:
    import asyncio
    import logging
    import signal

    from prometheus_client import REGISTRY

    from history.client import get_client
    from history.engine_priority import start_keeping_engine_niced
    from history.metrics import SinkCollector
    from history.migrations import migrate
    from history.sink import ClickHouseSink
    from iotp import gc_tuning
    from iotp.metrics_server import serve_metrics
    from iotp.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    if settings.clickhouse_embedded and settings.api_embedded_sink:
        typer.echo(
            "note: embedded ClickHouse and IOTP_API_EMBEDDED_SINK=true: the API process already "
            "runs the sink; running both would fight over the chDB directory.",
            err=True,
        )
        raise typer.Exit(2)
    client = get_client(settings)
    migrate(client, settings.clickhouse_database, settings)
    gc_tuning.tune(settings)

    async def main() -> None:
        import redis.asyncio as aioredis

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        redis = aioredis.from_url(settings.redis_url)
        niced: asyncio.Task[None] | None = None
        try:
            sink = ClickHouseSink(settings, client, redis=redis)
            port = settings.sink_metrics_port if metrics_port is None else metrics_port
            if port:
                REGISTRY.register(SinkCollector(lambda: sink))
                serve_metrics(port, settings.metrics_host, logging.getLogger("iotp.sink"))
            niced = start_keeping_engine_niced(settings)
            await sink.run(stop)
        finally:
            if niced is not None:
                niced.cancel()
            await redis.aclose()

    asyncio.run(main())
