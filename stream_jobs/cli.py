"""``iotp stream``: one Faust worker; run several for more partitions in parallel."""

from __future__ import annotations

from typing import Annotated

import typer


def stream(
    loglevel: Annotated[str, typer.Option(help="Faust log level")] = "info",
    loop: Annotated[str, typer.Option(help="Event loop: uvloop or aio (asyncio's own)")] = "uvloop",
    index: Annotated[int, typer.Option(min=0, help="Worker index when several run (metrics port offset)")] = 0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus /metrics port (default: IOTP_STREAM_METRICS_PORT + index); 0 disables"),
    ] = None,
) -> None:
    import logging
    import os

    os.environ.setdefault("FAUST_LOOP", loop)  # read when faust is first imported, just below
    from faust.worker import Worker
    from prometheus_client import REGISTRY

    from iotp import gc_tuning
    from iotp.metrics_server import serve_metrics
    from stream_jobs.app import STAT_FIELDS, StreamJob, app
    from stream_jobs.metrics import StreamCollector

    job: StreamJob = app.stream_job  # type: ignore[attr-defined]  # set on the Faust app by stream_jobs.app
    settings = job.settings
    if metrics_port is None:  # the setting is the first worker's port; 0 turns all of them off
        metrics_port = settings.stream_metrics_port + index if settings.stream_metrics_port else 0
    if metrics_port:
        REGISTRY.register(StreamCollector(job, STAT_FIELDS))
        serve_metrics(metrics_port, settings.metrics_host, logging.getLogger("iotp.stream"))
    gc_tuning.tune(settings)
    Worker(app, loglevel=loglevel).execute_from_commandline()
