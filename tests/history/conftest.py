"""History fixtures: one embedded chDB per test session (an embedded server serves one directory per
process), a database of its own per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import clickhouse_connect
import pytest

from history.client import close_clients
from history.migrations import migrate
from iotp.settings import Settings


@pytest.fixture(scope="session")
def ch_client(tmp_path_factory) -> Iterator:
    close_clients()  # the process may hold another chDB directory from an earlier test module
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}")
    yield client
    client.close()


@pytest.fixture
def ch_settings() -> Settings:
    return Settings(clickhouse_database=f"h_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def ch(ch_client, ch_settings) -> Iterator[tuple]:
    """(client, database) with the history schema migrated."""
    migrate(ch_client, ch_settings.clickhouse_database, ch_settings)
    yield ch_client, ch_settings.clickhouse_database
    ch_client.command(f"DROP DATABASE IF EXISTS {ch_settings.clickhouse_database} SYNC")
