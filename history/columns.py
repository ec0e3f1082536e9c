"""The sink's row layouts and their Arrow tables: one tuple per row, in the column order of the table.

``history.decode`` builds the rows from Kafka records; the sink inserts them with ``insert_arrow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

MS = pa.timestamp("ms", tz="UTC")
READING_COLUMNS = ["device_id", "device_type", "metric", "ts", "value", "seq", "ingest_ts"]

AGGREGATE_FIELDS = [
    "device_id",
    "device_type",
    "metric",
    "window_s",
    "start",
    "end",
    "count",
    "min",
    "max",
    "mean",
    "std",
    "late",
]


ALERT_FIELDS = [
    "alert_id",
    "device_id",
    "device_type",
    "metric",
    "rule",
    "severity",
    "state",
    "value",
    "expected_min",
    "expected_max",
    "first_seen",
    "last_seen",
    "resolved_at",
    "message",
]


def readings_arrow(rows: list[tuple]) -> pa.Table:
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in READING_COLUMNS]
    return pa.table(
        {
            "device_id": pa.array(cols[0], pa.string()),
            "device_type": pa.array(cols[1], pa.string()),
            "metric": pa.array(cols[2], pa.string()),
            "ts": pa.array(cols[3], MS),
            "value": pa.array(cols[4], pa.float64()),
            "seq": pa.array(cols[5], pa.uint64()),
            "ingest_ts": pa.array(cols[6], MS),
        }
    )


def aggregates_arrow(rows: list[tuple]) -> pa.Table:
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in AGGREGATE_FIELDS]
    types = [
        pa.string(),
        pa.string(),
        pa.string(),
        pa.uint32(),
        MS,
        MS,
        pa.uint64(),
        pa.float64(),
        pa.float64(),
        pa.float64(),
        pa.float64(),
        pa.uint32(),
    ]
    return pa.table({name: pa.array(col, t) for name, col, t in zip(AGGREGATE_FIELDS, cols, types, strict=True)})


def alerts_arrow(rows: list[tuple]) -> pa.Table:
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in ALERT_FIELDS]
    types = [pa.string()] * 7 + [pa.float64()] * 3 + [MS] * 3 + [pa.string()]
    return pa.table({name: pa.array(col, t) for name, col, t in zip(ALERT_FIELDS, cols, types, strict=True)})
