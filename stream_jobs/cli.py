"""``iotp stream``: one Faust worker; run several for more partitions in parallel."""

from __future__ import annotations

from typing import Annotated

import typer


def stream(
    loglevel: Annotated[str, typer.Option(help="Faust log level")] = "info",
    loop: Annotated[str, typer.Option(help="Event loop: uvloop or aio (asyncio's own)")] = "uvloop",
) -> None:
    import os

    os.environ.setdefault("FAUST_LOOP", loop)  # read when faust is first imported, just below
    from faust.worker import Worker

    from stream_jobs.app import app

    Worker(app, loglevel=loglevel).execute_from_commandline()
