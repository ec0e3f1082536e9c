"""Retry an async operation forever with capped exponential backoff, logging each retry.

The pipeline's at-least-once guarantees rest on this: a Kafka send, a ClickHouse insert or a stream
job's flush is not given up while its input is still unacked, so an outage stalls the service
(backpressure) instead of losing data. One helper instead of a hand-written loop per call site, so the
backoff and the log line are the same everywhere.

A call site that must stop retrying (shutdown) raises from ``on_retry`` or from the attempt itself:
any exception that is not in ``retry_on`` ends the loop and propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_DETAIL_CHARS = 300  # ClickHouse errors quote the whole query; the log needs the head of it


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial, initial*factor, ...`` up to ``cap`` (then ``cap`` forever)."""

    initial: float
    cap: float
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)


def describe(exc: BaseException) -> str:
    """``Type: message``, cut short: some exceptions have an empty ``str`` and some a huge one."""
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:_DETAIL_CHARS]


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    backoff: Backoff,
    log: logging.Logger,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> T:
    """Await ``attempt()`` until it returns; return its result.

    After each failure with an exception in ``retry_on``: log a warning naming ``what``, call
    ``on_retry(exc, delay)`` (metrics, or raise to give up), then ``sleep(delay)`` (default
    :func:`asyncio.sleep`; pass an interruptible one to cut the wait short on shutdown).
    """
    pause = sleep if sleep is not None else asyncio.sleep
    delays = backoff.delays()
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            delay = next(delays)
            log.warning("%s (%s); retrying in %.1fs", what, describe(exc), delay)
            if on_retry is not None:
                on_retry(exc, delay)
            await pause(delay)
