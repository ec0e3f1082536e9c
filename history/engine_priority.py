"""A lower OS scheduling priority (nice) for the embedded ClickHouse engine's own threads.

Why: with embedded chDB the history engine runs inside the API process, and its inserts and background
merges come in bursts of more than a core (the sink writes a block every ``IOTP_SINK_BATCH_SECONDS``), on
the same two cores as the gateway and the stream worker. In the load test's per-second CPU timeline the
seconds in which the API burst to 35-58 % of a core were the seconds in which readings waited longest
before the gateway even read them (docs/performance.md). For an operator who wants the live path first and
can let history fall a few seconds behind. Off by default (``IOTP_HISTORY_ENGINE_NICE=0``): at 5,000 msgs/s
nice 10 about halved the sensor -> gateway p99 but did not move the end-to-end p99, and added 0.4-1.5 s to
the sensor -> ClickHouse p99.

Only the engine's native threads are reniced. ClickHouse names each of its threads (``MergeMutate``,
``ThreadPool``, ``QueryPipelineEx``, ...); Python threads keep the interpreter's name, so they are left
alone and no thread that may hold the GIL is slowed (a niced GIL holder would slow the event loop too).
The engine starts threads as it needs them, so :func:`keep_engine_niced` looks again periodically.
Linux only (``/proc/<pid>/task``); elsewhere it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from iotp.settings import Settings

log = logging.getLogger("iotp.history.engine_priority")


def _comm(task: Path) -> str:
    return (task / "comm").read_text().strip()


def engine_threads(pid: int | None = None) -> list[int]:
    """Thread ids of ``pid`` (default: this process) whose name is not the main thread's: the threads a
    native library named, here the embedded ClickHouse engine's."""
    pid = pid or os.getpid()
    tasks = Path(f"/proc/{pid}/task")
    try:
        main = _comm(tasks / str(pid))
        out = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that ended while we looked
                if _comm(task) != main:
                    out.append(int(task.name))
        return out
    except OSError:
        return []


def renice_engine_threads(nice: int, pid: int | None = None) -> int:
    """Set the nice value of every engine thread (:func:`engine_threads`) that has another one; returns how
    many were changed."""
    changed = 0
    for tid in engine_threads(pid):
        with contextlib.suppress(ProcessLookupError):
            if os.getpriority(os.PRIO_PROCESS, tid) != nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
    return changed


async def keep_engine_niced(nice: int, interval_s: float = 2.0) -> None:
    """Renice the engine's threads now and every ``interval_s`` (new ones appear as it needs them), until
    cancelled. A failure (no permission to lower a priority that was raised, say) is logged once and ends
    the task: the pipeline works the same without it, only with more jitter."""
    while True:
        try:
            changed = renice_engine_threads(nice)
        except OSError as exc:
            log.warning("cannot renice the embedded ClickHouse threads to %d: %s", nice, exc)
            return
        if changed:
            log.debug("reniced %d embedded ClickHouse threads to %d", changed, nice)
        await asyncio.sleep(interval_s)


def start_keeping_engine_niced(settings: Settings) -> asyncio.Task[None] | None:
    """The :func:`keep_engine_niced` task for this process if the settings ask for it (embedded ClickHouse and
    ``history_engine_nice`` > 0), else None. The caller cancels it when it stops."""
    if not (settings.clickhouse_embedded and settings.history_engine_nice):
        return None
    return asyncio.create_task(keep_engine_niced(settings.history_engine_nice), name="engine-nice")
