"""Analytics queries used by the API. Every value is a server-side parameter (``{name:Type}``): no SQL is built
from user input; only the database name (from the settings) and table names (constants here) are formatted in.

Times: ``datetime`` arguments are converted to epoch milliseconds; a naive datetime is taken as UTC. Ranges are
half-open, ``[start, end)``. All functions are synchronous (call them with ``asyncio.to_thread`` from async code).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from clickhouse_connect.driver.client import Client

from history.columns import ALERT_FIELDS
from history.migrations import QUANTILES, TABLES, current_ttl_days
from iotp.schema import NO_SEQ, now_ms

Resolution = Literal["raw", "1m", "1h"]
STEP_S = {"1m": 60, "1h": 3600}
_TTL_CACHE: dict[str, tuple[float, dict[str, int | None]]] = {}


def _ms(value: datetime | int | float) -> int:
    if isinstance(value, int | float):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _f(value: float | None) -> float | None:
    if value is None or value != value:  # NaN (e.g. avg of nothing) -> None
        return None
    return float(value)


def _retention_days(client: Client, database: str) -> dict[str, int | None]:
    """Current TTL per table, cached for a minute."""
    now = time.monotonic()
    cached = _TTL_CACHE.get(database)
    if cached is None or now - cached[0] > 60:
        cached = (now, current_ttl_days(client, database))
        _TTL_CACHE[database] = cached
    return cached[1]


def _range_source(client: Client, database: str, start_ms: int, end_ms: int, allow_raw: bool = True) -> str:
    """Table for a range aggregate: raw up to 1 h, 1 min rollups up to 12 h, 1 h rollups beyond, each only
    while the range still lies inside that table's retention (see docs/history.md for the latencies)."""
    ttl = _retention_days(client, database)
    now = now_ms()
    span = end_ms - start_ms
    raw_days = ttl.get("readings") or 7
    m1_days = ttl.get("rollup_1m") or 90
    if allow_raw and span <= 3_600_000 and start_ms >= now - raw_days * 86_400_000:
        return "raw"
    if span <= 12 * 3_600_000 and start_ms >= now - m1_days * 86_400_000:
        return "1m"
    return "1h"


def device_series(
    client: Client,
    database: str,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    max_points: int = 1000,
    resolution: Literal["auto", "raw", "1m", "1h"] = "auto",
) -> dict:
    """A chart series of one device x metric over ``[start, end)``.

    ``auto`` picks raw when the range holds at most ``max_points`` raw readings, else 1 min buckets when the
    range has at most ``max_points`` minutes, else 1 h buckets. Rollup series are gap-filled: a bucket without
    readings has ``value``/``min``/``max`` None and ``count`` 0. Bucket ``value`` is the mean.
    """
    start_ms, end_ms = _ms(start), _ms(end)
    max_points = max(1, int(max_points))
    params = {"device_id": device_id, "metric": metric, "start": start_ms, "end": end_ms}
    if resolution == "auto":
        raw_count = client.query(
            f"SELECT count() FROM {database}.readings WHERE device_id = {{device_id:String}} "
            "AND metric = {metric:String} AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
            "AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC')",
            parameters=params,
        ).result_rows[0][0]
        if raw_count <= max_points:
            resolution = "raw"
        elif (end_ms - start_ms) / 60_000 <= max_points:
            resolution = "1m"
        else:
            resolution = "1h"
    if resolution == "raw":
        rows = client.query(
            f"SELECT toUnixTimestamp64Milli(ts), value FROM {database}.readings "
            "WHERE device_id = {device_id:String} AND metric = {metric:String} "
            "AND ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
            "AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') ORDER BY ts LIMIT {limit:UInt32}",
            parameters={**params, "limit": max_points},
        ).result_rows
        return {
            "resolution": "raw",
            "points": [{"ts": ts, "value": v, "min": v, "max": v, "count": 1} for ts, v in rows],
        }
    if resolution not in STEP_S:
        raise ValueError(f"unknown resolution {resolution!r}")
    step = STEP_S[resolution]
    table = f"rollup_{resolution}"
    # Buckets whose start lies in [floor(start), end); WITH FILL adds the empty ones.
    rows = client.query(
        f"SELECT bucket, countMerge(n) AS count, avgMerge(vavg) AS value, minMerge(vmin) AS lo, maxMerge(vmax) AS hi "
        f"FROM {database}.{table} WHERE device_id = {{device_id:String}} AND metric = {{metric:String}} "
        "AND bucket >= toStartOfInterval(toDateTime(intDiv({start:Int64}, 1000), 'UTC'), "
        "toIntervalSecond({step:UInt32})) AND bucket < toDateTime(intDiv({end:Int64} + 999, 1000), 'UTC') "
        "GROUP BY bucket ORDER BY bucket WITH FILL "
        "FROM toStartOfInterval(toDateTime(intDiv({start:Int64}, 1000), 'UTC'), toIntervalSecond({step:UInt32})) "
        "TO toDateTime(intDiv({end:Int64} + 999, 1000), 'UTC') STEP toIntervalSecond({step:UInt32})",
        parameters={**params, "step": step},
    ).result_rows
    points = []
    for bucket, count, value, lo, hi in rows:
        ts = int(bucket.replace(tzinfo=UTC).timestamp() * 1000) if isinstance(bucket, datetime) else int(bucket) * 1000
        if count:
            points.append({"ts": ts, "value": _f(value), "min": _f(lo), "max": _f(hi), "count": int(count)})
        else:
            points.append({"ts": ts, "value": None, "min": None, "max": None, "count": 0})
    return {"resolution": resolution, "points": points}


def fleet_stats(
    client: Client,
    database: str,
    start: datetime,
    end: datetime,
    device_type: str | None = None,
    metric: str | None = None,
    resolution: Literal["auto", "raw", "1m", "1h"] = "auto",
) -> list[dict]:
    """Per device type x metric over ``[start, end)``: count, mean, p50/p95/p99 (t-digest), min, max.

    ``auto`` reads raw rows for ranges up to 1 h, 1 min rollups up to 12 h, 1 h rollups beyond (rollup
    buckets that overlap the range count whole)."""
    start_ms, end_ms = _ms(start), _ms(end)
    source = _range_source(client, database, start_ms, end_ms) if resolution == "auto" else resolution
    q = ", ".join(str(x) for x in QUANTILES)
    params = {"start": start_ms, "end": end_ms, "device_type": device_type or "", "metric": metric or ""}
    filters = (
        "AND ({device_type:String} = '' OR device_type = {device_type:String}) "
        "AND ({metric:String} = '' OR metric = {metric:String}) "
    )
    if source == "raw":
        sql = (
            f"SELECT device_type, metric, count(), avg(value), quantilesTDigest({q})(value), min(value), max(value) "
            f"FROM {database}.readings WHERE ts >= fromUnixTimestamp64Milli({{start:Int64}}, 'UTC') "
            "AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC') " + filters
        )
    elif source in STEP_S:
        sql = (
            f"SELECT device_type, metric, countMerge(n), avgMerge(vavg), quantilesTDigestMerge({q})(q), "
            f"minMerge(vmin), maxMerge(vmax) FROM {database}.rollup_{source} "
            "WHERE bucket >= toStartOfInterval(toDateTime(intDiv({start:Int64}, 1000), 'UTC'), "
            f"toIntervalSecond({STEP_S[source]})) "
            "AND bucket < toDateTime(intDiv({end:Int64} + 999, 1000), 'UTC') " + filters
        )
    else:
        raise ValueError(f"unknown resolution {resolution!r}")
    rows = client.query(
        sql + "GROUP BY device_type, metric ORDER BY device_type, metric", parameters=params
    ).result_rows
    out = []
    for dt, m, n, mean, qs, lo, hi in rows:
        if not n:
            continue
        # t-digest centroids are Float32: clamp the estimates into the exact [min, max]
        p50, p95, p99 = (None if _f(x) is None else min(max(float(x), lo), hi) for x in qs)
        out.append(
            {
                "device_type": dt,
                "metric": m,
                "count": int(n),
                "mean": _f(mean),
                "p50": p50,
                "p95": p95,
                "p99": p99,
                "min": _f(lo),
                "max": _f(hi),
            }
        )
    return out


def top_devices(
    client: Client,
    database: str,
    start: datetime,
    end: datetime,
    by: Literal["alerts", "deviation"] = "alerts",
    limit: int = 10,
    device_type: str | None = None,
) -> list[dict]:
    """Top-N devices over ``[start, end)``.

    - ``alerts``: score = alerts opened in the range (distinct alert ids); also ``critical`` and ``open`` (now).
    - ``deviation``: score = the largest |device mean - fleet mean| / fleet std over the device's metrics, fleet
      = the devices of the same type (from the 1 min or 1 h rollups); also ``metric`` (the most deviating one)
      and ``mean`` / ``fleet_mean`` of that metric.
    """
    start_ms, end_ms = _ms(start), _ms(end)
    params = {"start": start_ms, "end": end_ms, "device_type": device_type or "", "limit": max(0, int(limit))}
    if by == "alerts":
        rows = client.query(
            "SELECT device_id, any(device_type), count() AS score, countIf(severity = 'critical'), "
            "countIf(state = 'open') FROM ("
            "  SELECT alert_id, device_id, device_type, severity, state "
            f"  FROM {database}.alerts WHERE first_seen >= fromUnixTimestamp64Milli({{start:Int64}}, 'UTC') "
            "  AND first_seen < fromUnixTimestamp64Milli({end:Int64}, 'UTC') "
            "  AND ({device_type:String} = '' OR device_type = {device_type:String}) "
            "  ORDER BY version DESC LIMIT 1 BY alert_id"
            ") GROUP BY device_id ORDER BY score DESC, device_id LIMIT {limit:UInt32}",
            parameters=params,
        ).result_rows
        return [
            {"device_id": d, "device_type": t, "score": float(s), "alerts": int(s), "critical": int(c), "open": int(o)}
            for d, t, s, c, o in rows
        ]
    if by != "deviation":
        raise ValueError(f"unknown ranking {by!r}")
    source = _range_source(client, database, start_ms, end_ms, allow_raw=False)
    table = f"{database}.rollup_{source}"
    where = (
        "bucket >= toStartOfInterval(toDateTime(intDiv({start:Int64}, 1000), 'UTC'), "
        f"toIntervalSecond({STEP_S[source]})) AND bucket < toDateTime(intDiv({{end:Int64}} + 999, 1000), 'UTC') "
        "AND ({device_type:String} = '' OR device_type = {device_type:String})"
    )
    rows = client.query(
        "WITH per_device AS ("
        f"  SELECT device_id, device_type, metric, avgMerge(vavg) AS mean FROM {table} WHERE {where} "
        "  GROUP BY device_id, device_type, metric"
        "), fleet AS ("
        f"  SELECT device_type, metric, avgMerge(vavg) AS fmean, sqrt(varPopMerge(vvar)) AS fstd FROM {table} "
        f"  WHERE {where} GROUP BY device_type, metric"
        ") "
        "SELECT device_id, device_type, max(z) AS score, argMax(metric, z), argMax(mean, z), argMax(fmean, z) FROM ("
        "  SELECT d.device_id AS device_id, d.device_type AS device_type, d.metric AS metric, d.mean AS mean, "
        "         f.fmean AS fmean, if(f.fstd > 0, abs(d.mean - f.fmean) / f.fstd, 0) AS z "
        "  FROM per_device AS d INNER JOIN fleet AS f ON d.device_type = f.device_type AND d.metric = f.metric"
        ") GROUP BY device_id, device_type ORDER BY score DESC, device_id LIMIT {limit:UInt32}",
        parameters=params,
    ).result_rows
    return [
        {"device_id": d, "device_type": t, "score": float(s), "metric": m, "mean": _f(mean), "fleet_mean": _f(fmean)}
        for d, t, s, m, mean, fmean in rows
    ]


def alert_history(
    client: Client,
    database: str,
    start: datetime,
    end: datetime,
    device_id: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict]:
    """Alerts active at some time in ``[start, end)`` (opened before ``end`` and either still open or resolved
    at/after ``start``), in their latest state (resolved beats open), newest first. Times are epoch ms, as in
    :class:`iotp.schema.Alert`; the filters compare against the latest state."""
    params = {
        "start": _ms(start),
        "end": _ms(end),
        "device_id": device_id or "",
        "rule": rule or "",
        "severity": severity or "",
        "state": state or "",
        "limit": max(0, int(limit)),
        "offset": max(0, int(offset)),
    }
    rows = client.query(
        "SELECT alert_id, device_id, device_type, metric, rule, severity, state, value, expected_min, expected_max, "
        "toUnixTimestamp64Milli(first_seen), toUnixTimestamp64Milli(last_seen), "
        "if(isNull(resolved_at), NULL, toUnixTimestamp64Milli(assumeNotNull(resolved_at))), message FROM ("
        f"  SELECT * FROM {database}.alerts "
        "  WHERE first_seen < fromUnixTimestamp64Milli({end:Int64}, 'UTC') "
        "  AND ({device_id:String} = '' OR device_id = {device_id:String}) "
        "  ORDER BY version DESC LIMIT 1 BY alert_id"
        ") WHERE (state = 'open' OR resolved_at IS NULL "
        "       OR resolved_at >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')) "
        "AND ({rule:String} = '' OR rule = {rule:String}) "
        "AND ({severity:String} = '' OR severity = {severity:String}) "
        "AND ({state:String} = '' OR state = {state:String}) "
        "ORDER BY first_seen DESC, alert_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
        parameters=params,
    ).result_rows
    return [{**dict(zip(ALERT_FIELDS, row, strict=True)), "v": 1} for row in rows]


def count_rows(client: Client, database: str) -> dict[str, int]:
    """Stored rows per history table (active parts; rollup rows not yet merged count separately)."""
    result = client.query(
        "SELECT table, sum(rows) FROM system.parts WHERE database = {db:String} AND active GROUP BY table",
        parameters={"db": database},
    )
    rows = {table: n for table, n in result.result_rows}
    return {table: int(rows.get(table, 0)) for table in TABLES}


def ingest_check(client: Client, database: str, device_prefix: str) -> dict:
    """What reached the raw table for devices whose id starts with ``device_prefix`` (the load test tags its
    fleet this way): distinct readings (identities ``(device_id, ts, seq)``), duplicate rows, readings missing
    inside each device's sequence runs, and sensor time -> stored latency (``stored_ts - ts``) percentiles in
    ms. A run is a device's readings in time order while ``seq`` increases: a reboot (seq back, time forward)
    starts a new run instead of counting as a gap; readings without seq have no runs."""
    row = client.query(
        f"SELECT uniqExact(device_id, ts, seq), count(), count() - uniqExact(device_id, metric, ts, seq), "
        "uniqExact(device_id), "
        "quantilesExact(0.5, 0.95, 0.99)(dateDiff('millisecond', ts, stored_ts)), "
        "max(dateDiff('millisecond', ts, stored_ts)) "
        f"FROM {database}.readings WHERE startsWith(device_id, {{prefix:String}})",
        parameters={"prefix": device_prefix},
    ).result_rows[0]
    readings, rows, duplicates, devices, quantiles, worst = row
    gaps = client.query(
        "SELECT sum(if(seq > prev, seq - prev - 1, 0)) FROM ("
        "  SELECT seq, lagInFrame(toNullable(seq)) OVER (PARTITION BY device_id ORDER BY ts, seq "
        "  ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS prev FROM ("
        f"    SELECT DISTINCT device_id, ts, seq FROM {database}.readings "
        "    WHERE startsWith(device_id, {prefix:String}) AND seq < {no_seq:UInt64}))",
        parameters={"prefix": device_prefix, "no_seq": NO_SEQ},
    ).result_rows[0][0]
    latency = (
        {"p50": float(quantiles[0]), "p95": float(quantiles[1]), "p99": float(quantiles[2]), "max": float(worst)}
        if readings
        else {}
    )
    return {
        "readings": int(readings),
        "rows": int(rows),
        "duplicate_rows": int(duplicates),
        "devices": int(devices),
        "missing_in_sequence": int(gaps or 0),
        "latency_ms": latency,
    }
