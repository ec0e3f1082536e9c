"""Wait on a condition with a timeout -- never sleep and hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, message: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message} (last value: {last!r})")


async def async_wait_for(
    predicate: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.1, message: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message} (last value: {last!r})")


async def until(predicate: Callable[[], object], timeout: float = 30.0, message: str = "condition") -> object:
    """:func:`async_wait_for` for plain and async predicates alike."""

    async def check() -> object:
        result = predicate()
        return await result if asyncio.iscoroutine(result) else result

    return await async_wait_for(check, timeout=timeout, message=message)


async def wait_api_ready(http: httpx.AsyncClient, timeout: float = 90.0) -> None:
    """Until the API (``http``'s base URL) answers its readiness probe with 200."""

    async def ready() -> bool:
        try:
            return (await http.get("/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    await async_wait_for(ready, timeout=timeout, message="API ready")
