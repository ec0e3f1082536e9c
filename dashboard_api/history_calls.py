"""Run a History query (sync clickhouse-connect calls) off the event loop, with this app's client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")


async def run_query(request: Request, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``query(client, database, *args, **kwargs)`` in a worker thread (ClickHouse errors become a 503 in the
    app's exception handler)."""
    return await asyncio.to_thread(
        query, request.app.state.clickhouse, request.app.state.settings.clickhouse_database, *args, **kwargs
    )
