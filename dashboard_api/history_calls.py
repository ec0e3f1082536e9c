"""Run a History query (sync clickhouse-connect calls) off the event loop, with this app's client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client
from fastapi import Request

T = TypeVar("T")


@dataclass(frozen=True)
class History:
    """The app's ClickHouse client and database (a route gets one through ``dashboard_api.deps.HistoryDep``)."""

    client: Client
    database: str

    async def run(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``query(client, database, *args, **kwargs)`` in a worker thread (ClickHouse errors become a 503 in
        the app's exception handler)."""
        return await asyncio.to_thread(query, self.client, self.database, *args, **kwargs)


async def run_query(request: Request, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """:meth:`History.run` with the request's app (for callers without the dependency)."""
    state = request.app.state
    return await History(state.clickhouse, state.settings.clickhouse_database).run(query, *args, **kwargs)
