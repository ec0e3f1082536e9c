"""Versioned, idempotent schema migrations, applied in order at start.

Each migration is a list of statements; ``{db}`` is the database name. Applied versions are recorded in
``{db}.schema_migrations``, so a second start applies nothing.
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

log = logging.getLogger("iotp.history")

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "raw readings", [
        """
        CREATE TABLE IF NOT EXISTS {db}.readings (
            device_id   LowCardinality(String),
            device_type LowCardinality(String),
            metric      LowCardinality(String),
            ts          DateTime64(3, 'UTC'),
            value       Float64,
            seq         UInt64,
            reading_id  String,
            ingest_ts   DateTime64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toDate(ts)
        ORDER BY (device_id, metric, ts, seq)
        """,
    ]),
]


def migrate(client: Client, database: str) -> list[int]:
    """Apply the missing migrations; return the versions applied now."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations (version UInt32, name String, "
        "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version")
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        for statement in statements:
            client.command(statement.format(db=database))
        client.insert(f"{database}.schema_migrations", [[version, name]], column_names=["version", "name"])
        log.info("applied migration %d: %s", version, name)
        applied.append(version)
    return applied
