"""Versioned, idempotent schema migrations, applied in order at start, then retention (TTL) reconciled.

Each migration is a list of statements; ``{db}`` is the database name and ``{ttl_*}`` the retention in days
from the settings at creation time. Applied versions are recorded in ``{db}.schema_migrations``, so a second
start applies nothing. After the migrations, :func:`apply_retention` compares every table's TTL with the
settings and runs ``ALTER TABLE ... MODIFY TTL`` where they differ, so a changed retention setting takes effect
at the next start without a new migration.

Schema (see docs/history.md):

- ``readings``: raw readings, plain MergeTree (not Replacing), one row per device x metric x reading; a
  reading is identified by ``(device_id, ts, seq)`` where ``seq`` holds ``iotp.schema.reading_key`` (the
  device's seq, or ``2^63 | hash of the metrics`` for a device that sends none; alias ``has_seq``),
  partitioned by day, ordered by (device_id, metric, ts). Idempotence comes from insert deduplication tokens
  (``non_replicated_deduplication_window``, on the rollup tables as well: the views deduplicate by the same
  token), so the rollups never count a redelivered block twice.
- ``rollup_1m`` / ``rollup_1h``: AggregatingMergeTree fed by materialized views from ``readings``, holding
  count/min/max/avg/varPop states and ``quantilesTDigest(0.5, 0.95, 0.99)`` states.
- ``window_aggregates``: the stream jobs' closed windows (aggregates topic), ReplacingMergeTree on the window
  key, so a redelivered record replaces itself.
- ``alerts``: open/resolved events (alerts topic), ReplacingMergeTree(version) keyed by alert id; the latest
  event of an alert (resolved beats open, then newest ``last_seen``) survives.
- ``sink_plans``: per Kafka partition, the offset range of the batch the sink is about to insert, written
  before the insert, so a restarted sink re-forms exactly that batch and re-sends it with the same token;
  ``last_fp`` fingerprints the block's last record, so a plan of another incarnation of the topic is
  recognised (``iotp.kafka_marks``).
"""

from __future__ import annotations

import logging
import re

from clickhouse_connect.driver.client import Client

from iotp.settings import Settings

log = logging.getLogger("iotp.history")

# table -> (TTL time expression, settings field with the retention in days)
RETENTION: dict[str, tuple[str, str]] = {
    "readings": ("toDateTime(ts)", "history_ttl_raw_days"),
    "rollup_1m": ("bucket", "history_ttl_1m_days"),
    "rollup_1h": ("bucket", "history_ttl_1h_days"),
    "window_aggregates": ("toDateTime(start)", "history_ttl_aggregates_days"),
    "alerts": ("toDateTime(first_seen)", "history_ttl_alerts_days"),
}

TABLES = ["readings", "rollup_1m", "rollup_1h", "window_aggregates", "alerts"]

QUANTILES = (0.5, 0.95, 0.99)


def _ttl(table: str, days: int) -> str:
    return f"{RETENTION[table][0]} + toIntervalDay({int(days)})"


def _rollup_table(name: str, partition: str) -> str:
    return f"""
        CREATE TABLE IF NOT EXISTS {{db}}.{name} (
            device_id   LowCardinality(String),
            device_type LowCardinality(String),
            metric      LowCardinality(String),
            bucket      DateTime('UTC'),
            n           AggregateFunction(count),
            vmin        AggregateFunction(min, Float64),
            vmax        AggregateFunction(max, Float64),
            vavg        AggregateFunction(avg, Float64),
            vvar        AggregateFunction(varPop, Float64),
            q           AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64)
        )
        ENGINE = AggregatingMergeTree
        PARTITION BY {partition}
        ORDER BY (device_id, metric, bucket, device_type)
        TTL {{ttl_{name}}}
        SETTINGS non_replicated_deduplication_window = {{dedup_window}}
        """


def _rollup_view(name: str, interval: str) -> str:
    return f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{name}_mv TO {{db}}.{name} AS
        SELECT device_id, device_type, metric,
               toStartOfInterval(toDateTime(ts, 'UTC'), {interval}) AS bucket,
               countState() AS n, minState(value) AS vmin, maxState(value) AS vmax, avgState(value) AS vavg,
               varPopState(value) AS vvar, quantilesTDigestState(0.5, 0.95, 0.99)(value) AS q
        FROM {{db}}.readings
        GROUP BY device_id, metric, bucket, device_type
        """


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    # Version 1 was the walking skeleton's ReplacingMergeTree readings table; version 2 replaces it.
    (1, "raw readings (skeleton, superseded by 2)", []),
    (
        2,
        "history schema: raw readings with insert dedup, 1m/1h rollups, window aggregates, alerts, sink plans",
        [
            "DROP VIEW IF EXISTS {db}.rollup_1m_mv",
            "DROP VIEW IF EXISTS {db}.rollup_1h_mv",
            "DROP TABLE IF EXISTS {db}.readings",
            """
        CREATE TABLE IF NOT EXISTS {db}.readings (
            device_id   LowCardinality(String),
            device_type LowCardinality(String),
            metric      LowCardinality(String),
            ts          DateTime64(3, 'UTC') CODEC(DoubleDelta, LZ4),
            value       Float64 CODEC(Gorilla, LZ4),
            seq         UInt64 CODEC(Delta, LZ4),
            ingest_ts   DateTime64(3, 'UTC') CODEC(DoubleDelta, LZ4),
            reading_id  String ALIAS concat(device_id, ':', toString(seq))
        )
        ENGINE = MergeTree
        PARTITION BY toDate(ts)
        ORDER BY (device_id, metric, ts)
        TTL {ttl_readings}
        SETTINGS non_replicated_deduplication_window = {dedup_window}
        """,
            _rollup_table("rollup_1m", "toDate(bucket)"),
            _rollup_table("rollup_1h", "toYYYYMM(bucket)"),
            _rollup_view("rollup_1m", "INTERVAL 1 MINUTE"),
            _rollup_view("rollup_1h", "INTERVAL 1 HOUR"),
            """
        CREATE TABLE IF NOT EXISTS {db}.window_aggregates (
            device_id   LowCardinality(String),
            device_type LowCardinality(String),
            metric      LowCardinality(String),
            window_s    UInt32,
            start       DateTime64(3, 'UTC'),
            end         DateTime64(3, 'UTC'),
            count       UInt64,
            min         Float64,
            max         Float64,
            mean        Float64,
            std         Float64,
            late        UInt32,
            ingest_ts   DateTime64(3, 'UTC') DEFAULT now64(3)
        )
        ENGINE = ReplacingMergeTree(ingest_ts)
        PARTITION BY toDate(start)
        ORDER BY (device_id, metric, window_s, start)
        TTL {ttl_window_aggregates}
        """,
            """
        CREATE TABLE IF NOT EXISTS {db}.alerts (
            alert_id      String,
            device_id     LowCardinality(String),
            device_type   LowCardinality(String),
            metric        LowCardinality(Nullable(String)),
            rule          LowCardinality(String),
            severity      LowCardinality(String),
            state         LowCardinality(String),
            value         Nullable(Float64),
            expected_min  Nullable(Float64),
            expected_max  Nullable(Float64),
            first_seen    DateTime64(3, 'UTC'),
            last_seen     DateTime64(3, 'UTC'),
            resolved_at   Nullable(DateTime64(3, 'UTC')),
            message       String,
            version       UInt64 DEFAULT
                toUInt64(toUnixTimestamp64Milli(last_seen)) + if(state = 'resolved', 140737488355328, 0)
        )
        ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(first_seen)
        ORDER BY (device_id, alert_id)
        TTL {ttl_alerts}
        """,
            """
        CREATE TABLE IF NOT EXISTS {db}.sink_plans (
            group_id     String,
            topic        String,
            partition    UInt32,
            first_offset UInt64,
            last_offset  UInt64,
            token        String,
            created      DateTime64(3, 'UTC') DEFAULT now64(3)
        )
        ENGINE = ReplacingMergeTree(created)
        ORDER BY (group_id, topic, partition)
        TTL toDateTime(created) + toIntervalDay(30)
        """,
        ],
    ),
    (
        3,
        "readings.stored_ts: when the row reached ClickHouse (sensor -> stored latency)",
        [
            "ALTER TABLE {db}.readings ADD COLUMN IF NOT EXISTS stored_ts DateTime64(3, 'UTC') DEFAULT now64(3) "
            "CODEC(DoubleDelta, LZ4)",
        ],
    ),
    (
        4,
        "reading identity (device_id, ts, seq): seq holds the key (seq, or >= 2^63 for a device without seq)",
        [
            "ALTER TABLE {db}.readings MODIFY COLUMN reading_id String ALIAS "
            "concat(device_id, ':', toString(toUnixTimestamp64Milli(ts)), ':', toString(seq))",
            "ALTER TABLE {db}.readings ADD COLUMN IF NOT EXISTS has_seq UInt8 ALIAS seq < 9223372036854775808",
        ],
    ),
    (
        5,
        "sink_plans.last_fp: fingerprint of the planned block's last record (a plan of another topic "
        "incarnation is discarded, not replayed)",
        ["ALTER TABLE {db}.sink_plans ADD COLUMN IF NOT EXISTS last_fp String DEFAULT ''"],
    ),
]


def _format_values(settings: Settings, database: str) -> dict[str, object]:
    values: dict[str, object] = {"db": database, "dedup_window": int(settings.sink_dedup_window)}
    for table, (_, field) in RETENTION.items():
        values[f"ttl_{table}"] = _ttl(table, getattr(settings, field))
    return values


def migrate(client: Client, database: str, settings: Settings | None = None) -> list[int]:
    """Apply the missing migrations and reconcile retention; return the versions applied now.

    ``settings`` gives the retention and dedup window; by default the process settings (environment)."""
    if settings is None:
        from iotp.settings import get_settings

        settings = get_settings()
    values = _format_values(settings, database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations (version UInt32, name String, "
        "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        for statement in statements:
            client.command(statement.format(**values))
        client.insert(f"{database}.schema_migrations", [[version, name]], column_names=["version", "name"])
        log.info("applied migration %d: %s", version, name)
        applied.append(version)
    apply_retention(client, database, settings)
    return applied


def current_ttl_days(client: Client, database: str) -> dict[str, int | None]:
    """Retention in days per history table, as ClickHouse has it now."""
    rows = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String} AND name IN {names:Array(String)}",
        parameters={"db": database, "names": list(RETENTION)},
    ).result_rows
    out: dict[str, int | None] = {}
    for name, engine_full in rows:
        match = re.search(r"TTL .*?toIntervalDay\((\d+)\)", engine_full)
        out[name] = int(match.group(1)) if match else None
    return out


def apply_retention(client: Client, database: str, settings: Settings) -> list[str]:
    """``MODIFY TTL`` every table whose retention differs from the settings; return the tables changed."""
    current = current_ttl_days(client, database)
    changed = []
    for table, (_, field) in RETENTION.items():
        days = int(getattr(settings, field))
        if table in current and current[table] != days:
            client.command(f"ALTER TABLE {database}.{table} MODIFY TTL {_ttl(table, days)}")
            log.info("retention of %s.%s set to %d days", database, table, days)
            changed.append(table)
    return changed
