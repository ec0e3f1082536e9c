"""Schema: migrations, rollups equal raw aggregates, deduplication of redelivered blocks, TTL retention."""

from __future__ import annotations

import pytest

from history.migrations import MIGRATIONS, current_ttl_days, migrate
from history.queries import count_rows
from iotp.schema import now_ms
from tests.history.helpers import MIN, insert_rows, make_rows

DAY = 86_400_000


def test_migrations_idempotent_and_retention_from_settings(ch_client, ch_settings):
    db = ch_settings.clickhouse_database
    try:
        assert migrate(ch_client, db, ch_settings) == [version for version, _, _ in MIGRATIONS]
        assert migrate(ch_client, db, ch_settings) == []
        assert current_ttl_days(ch_client, db) == {
            "readings": 7,
            "rollup_1m": 90,
            "rollup_1h": 730,
            "window_aggregates": 90,
            "alerts": 365,
        }
        changed = ch_settings.model_copy(update={"history_ttl_raw_days": 3, "history_ttl_1h_days": 400})
        assert migrate(ch_client, db, changed) == []
        assert current_ttl_days(ch_client, db)["readings"] == 3
        assert current_ttl_days(ch_client, db)["rollup_1h"] == 400
        engine = ch_client.query(
            "SELECT engine FROM system.tables WHERE database = {d:String} AND name = 'readings'", parameters={"d": db}
        ).result_rows[0][0]
        assert engine == "MergeTree"
    finally:
        ch_client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


def _raw_vs_rollup(client, db, table, interval, d):
    raw = client.query(
        f"SELECT device_id, metric, toStartOfInterval(toDateTime(ts, 'UTC'), INTERVAL {interval}) AS b, count(), "
        f"min(value), max(value), avg(value), quantilesExactInclusive({0.5 - d}, {0.5 + d})(value), "
        f"quantilesExactInclusive({0.95 - d}, {min(0.95 + d, 1.0)})(value), stddevPop(value) FROM {db}.readings "
        f"GROUP BY device_id, metric, b ORDER BY device_id, metric, b"
    ).result_rows
    roll = client.query(
        f"SELECT device_id, metric, bucket, countMerge(n), minMerge(vmin), maxMerge(vmax), avgMerge(vavg), "
        f"quantilesTDigestMerge(0.5, 0.95, 0.99)(q), sqrt(varPopMerge(vvar)) FROM {db}.{table} "
        f"GROUP BY device_id, metric, bucket ORDER BY device_id, metric, bucket"
    ).result_rows
    return raw, roll


def test_rollups_equal_aggregates_of_raw_rows(ch):
    client, db = ch
    start = (now_ms() // DAY - 1) * DAY + 3 * MIN + 500  # spans midnight: two day partitions
    rows = make_rows(devices=4, per_device=3000, start_ms=start - 3 * 3_600_000, step_ms=3_000)
    for i in range(0, len(rows), 5000):  # several inserts: rollup states merge across blocks
        insert_rows(client, db, rows[i : i + 5000], token=f"t{i}")
    # t-digest quantiles: within a rank band of the exact ones (20 values per minute, 1200 per hour)
    for table, interval, d in (("rollup_1m", "1 MINUTE", 0.1), ("rollup_1h", "1 HOUR", 0.02)):
        raw, roll = _raw_vs_rollup(client, db, table, interval, d)
        assert len(raw) == len(roll) > 0
        for r, g in zip(raw, roll, strict=True):
            assert r[:4] == g[:4], (r, g)  # key and exact count
            assert r[4] == g[4] and r[5] == g[5]  # min, max exact
            assert r[6] == pytest.approx(g[6], rel=1e-9)  # mean
            assert r[9] == pytest.approx(g[8], rel=1e-6, abs=1e-9)  # stddev
            eps = 1e-4 * max(1.0, abs(r[5]))  # t-digest centroids are Float32
            assert r[7][0] - eps <= g[7][0] <= r[7][1] + eps, (r, g)  # p50
            assert r[8][0] - eps <= g[7][1] <= r[8][1] + eps, (r, g)  # p95
    total = client.query(f"SELECT count() FROM {db}.readings").result_rows[0][0]
    assert total == len(rows)
    assert client.query(f"SELECT countMerge(n) FROM {db}.rollup_1h").result_rows[0][0] == len(rows)


def test_redelivered_block_stores_no_duplicates_raw_or_rollups(ch):
    client, db = ch
    rows = make_rows(devices=3, per_device=200, start_ms=now_ms() - 3_600_000)
    for _ in range(3):  # the same block three times, with the sink's token
        insert_rows(client, db, rows, token="iotp.readings:0:100-199:1-2")
    insert_rows(client, db, rows[:10], token="iotp.readings:0:100-199:1-2")  # same token, partial content
    n = len(rows)
    assert client.query(f"SELECT count() FROM {db}.readings").result_rows[0][0] == n
    for table in ("rollup_1m", "rollup_1h"):
        assert client.query(f"SELECT countMerge(n) FROM {db}.{table}").result_rows[0][0] == n
    # a different block (new token) does land
    insert_rows(client, db, rows[:10], token="iotp.readings:0:200-201:3-4")
    assert client.query(f"SELECT count() FROM {db}.readings").result_rows[0][0] == n + 10
    assert count_rows(client, db)["readings"] == n + 10


def test_ttl_removes_expired_rows(ch):
    client, db = ch
    now = now_ms()
    fresh = make_rows(devices=1, per_device=10, start_ms=now - 3_600_000, seed=2)
    old_raw = make_rows(devices=1, per_device=10, start_ms=now - 10 * DAY, seed=3)  # > 7 days: raw only expires
    old_all = make_rows(devices=1, per_device=10, start_ms=now - 100 * DAY, seed=4)  # > 90 days: 1m expires too
    insert_rows(client, db, fresh + old_raw + old_all, token="ttl")
    for table in ("readings", "rollup_1m", "rollup_1h"):
        client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")

    def count(table, older_than_days):
        col = "ts" if table == "readings" else "bucket"
        sql = f"SELECT count() FROM {db}.{table} WHERE {col} < now() - toIntervalDay({older_than_days})"
        return client.query(sql).result_rows[0][0]

    assert client.query(f"SELECT count() FROM {db}.readings").result_rows[0][0] == len(fresh)
    assert count("readings", 1) == 0
    assert count("rollup_1m", 50) == 0 and count("rollup_1m", 5) > 0  # 10-day-old buckets kept (90 d)
    assert count("rollup_1h", 50) > 0  # 1 h rollups keep 2 years
