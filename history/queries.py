"""Analytics queries used by the API. Every query is parameterized (``{name:Type}``): no SQL is built from
user input; only identifiers from the settings are formatted in."""

from __future__ import annotations

from datetime import datetime

from clickhouse_connect.driver.client import Client


def device_history(client: Client, database: str, device_id: str, metric: str, start: datetime,
                   end: datetime, limit: int = 10000) -> list[dict]:
    result = client.query(
        f"SELECT toUnixTimestamp64Milli(ts) AS ts_ms, value, seq FROM {database}.readings FINAL "
        "WHERE device_id = {device_id:String} AND metric = {metric:String} "
        "AND ts >= {start:DateTime64(3)} AND ts < {end:DateTime64(3)} ORDER BY ts LIMIT {limit:UInt32}",
        parameters={"device_id": device_id, "metric": metric, "start": start, "end": end, "limit": limit},
    )
    return [{"ts": ts, "value": value, "seq": seq} for ts, value, seq in result.result_rows]


def count_readings(client: Client, database: str, reading_ids: list[str]) -> dict[str, int]:
    """Stored rows per reading id (one row per metric), deduplicated -- used by tests and the load test."""
    result = client.query(
        f"SELECT reading_id, count() FROM {database}.readings FINAL "
        "WHERE reading_id IN {ids:Array(String)} GROUP BY reading_id",
        parameters={"ids": reading_ids},
    )
    return dict(result.result_rows)
