"""ClickHouse clients: embedded chDB (``chdb:///dir``) by default, a server through ``CLICKHOUSE_URL``.

One process owns a chDB data directory, so in embedded mode the sink and the API run in one process and
share the clients made here.
"""

from __future__ import annotations

import threading

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from iotp.settings import Settings

_lock = threading.Lock()
_clients: dict[str, Client] = {}


def get_client(settings: Settings) -> Client:
    """A client for the configured ClickHouse; one per DSN per process."""
    dsn = settings.clickhouse_dsn
    with _lock:
        client = _clients.get(dsn)
        if client is None:
            if settings.clickhouse_embedded:
                path = dsn.removeprefix("chdb://")
                from pathlib import Path

                Path(path).mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=dsn)
            _clients[dsn] = client
        return client


def close_clients() -> None:
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
