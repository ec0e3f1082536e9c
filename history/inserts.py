"""ClickHouse inserts of the sink (synchronous: the sink runs them in a worker thread).

An insert with a token is deduplicated by ClickHouse, in the raw table and in the rollups fed from it; a
block ClickHouse rejects as data (not as an outage) is bisected down to the records it refuses.
"""

from __future__ import annotations

import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from history.blocks import Block, Record


def insert(client: Client, table: str, data: pa.Table, token: str | None) -> None:
    settings = (
        {
            "insert_deduplicate": 1,
            "insert_deduplication_token": token,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        if token
        else None
    )
    client.insert_arrow(table, data, settings=settings)


def insert_block(client: Client, block: Block, allow_total_reject: bool) -> list[tuple[Record, str]]:
    """Insert a block, bisecting it on a data error; return the records ClickHouse rejected.

    If every part of the block fails the error is taken for an outage and raised (so the caller backs
    off and retries), unless ``allow_total_reject`` (the same block failed repeatedly while ClickHouse
    answers other statements)."""
    rejected: list[tuple[Record, str]] = []

    def attempt(records: list[Record], token: str | None) -> bool:
        try:
            rows = [row for r in records for row in r.rows]
            if rows:
                insert(client, block.target.table, block.target.to_arrow(rows), token)
            return True
        except DatabaseError as exc:
            if isinstance(exc, OperationalError):
                raise
            if len(records) == 1:
                rejected.append((records[0], f"rejected by ClickHouse: {str(exc)[:400]}"))
                return False
            mid = len(records) // 2
            ok_left = attempt(records[:mid], f"{token}/0" if token else None)
            ok_right = attempt(records[mid:], f"{token}/1" if token else None)
            return ok_left or ok_right

    try:
        insert(client, block.target.table, block.target.to_arrow(block.rows()), block.token)
        return []
    except OperationalError:
        raise
    except DatabaseError as first_error:
        if len(block.records) > 1 and attempt(block.records, block.token):
            return rejected
        if allow_total_reject:
            return [(r, f"rejected by ClickHouse: {str(first_error)[:400]}") for r in block.records]
        raise


def healthy(client: Client) -> bool:
    """Does ClickHouse answer at all? (tells a block it rejects from an outage)"""
    try:
        client.command("SELECT 1")
        return True
    except Exception:
        return False
