"""Analytics queries: series resolution and gap filling, fleet statistics, top devices, alert history, and
parameters that treat SQL-ish strings as values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from history import queries
from history.columns import alerts_arrow
from history.decode import decode_alert
from iotp.schema import Alert, now_ms
from tests.history.helpers import MIN, insert_rows

HOUR = 60 * MIN


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@pytest.fixture
def base_ms() -> int:
    return (now_ms() // HOUR - 30) * HOUR  # 30 h ago, on the hour


def _series_rows(base_ms: int) -> list[tuple]:
    rows = []
    # dev-a temperature: one reading every 10 s for 2 h, then a 30 min gap, then 1 h more
    for i in range(720):
        rows.append(("dev-a", "climate", "temperature", base_ms + i * 10_000, 20.0 + (i % 6), i, base_ms))
    for i in range(360):
        ts = base_ms + 150 * MIN + i * 10_000
        rows.append(("dev-a", "climate", "temperature", ts, 30.0, 1000 + i, ts))
    return rows


def test_device_series_resolution_and_gap_filling(ch, base_ms):
    client, db = ch
    insert_rows(client, db, _series_rows(base_ms), token="series")
    start, end = _dt(base_ms), _dt(base_ms + 4 * HOUR)

    raw = queries.device_series(client, db, "dev-a", "temperature", start, _dt(base_ms + 10 * MIN))
    assert raw["resolution"] == "raw" and len(raw["points"]) == 60
    assert raw["points"][0] == {"ts": base_ms, "value": 20.0, "min": 20.0, "max": 20.0, "count": 1}

    m1 = queries.device_series(client, db, "dev-a", "temperature", start, end, max_points=1000)
    assert m1["resolution"] == "1m"  # 1080 raw points > 1000, 240 minutes <= 1000
    pts = m1["points"]
    assert len(pts) == 240 and [p["ts"] for p in pts] == [base_ms + i * MIN for i in range(240)]
    assert pts[0] == {"ts": base_ms, "value": 22.5, "min": 20.0, "max": 25.0, "count": 6}
    gap = [p for p in pts if base_ms + 120 * MIN <= p["ts"] < base_ms + 150 * MIN]
    assert len(gap) == 30 and all(
        p == {"ts": p["ts"], "value": None, "min": None, "max": None, "count": 0} for p in gap
    )
    assert pts[-1]["ts"] == base_ms + 239 * MIN and pts[-1]["count"] == 0  # after the data: filled to the end
    assert sum(p["count"] for p in pts) == 1080

    h1 = queries.device_series(client, db, "dev-a", "temperature", start, end, max_points=100)
    assert h1["resolution"] == "1h" and [p["count"] for p in h1["points"]] == [360, 360, 180, 180]
    assert h1["points"][2]["min"] == 30.0

    forced = queries.device_series(client, db, "dev-a", "temperature", start, end, resolution="1h")
    assert forced == h1
    empty = queries.device_series(client, db, "nobody", "temperature", start, end, max_points=10, resolution="1m")
    assert len(empty["points"]) == 240 and all(p["count"] == 0 for p in empty["points"])


def test_fleet_stats_and_top_devices_by_deviation(ch, base_ms):
    client, db = ch
    rows = []
    for d in range(5):
        for i in range(600):  # 1 h per device, one reading per 6 s; dev-4 runs hot
            ts = base_ms + i * 6000
            value = (40.0 if d == 4 else 20.0) + (i % 10) * 0.1
            rows.append((f"dev-{d}", "climate", "temperature", ts, value, i, ts))
            rows.append((f"dev-{d}", "climate", "humidity", ts, 50.0, i, ts))
        rows.append((f"pump-{d}", "pump", "pressure", base_ms, 3.0 + d, 0, base_ms))
    insert_rows(client, db, rows, token="fleet")
    start, end = _dt(base_ms), _dt(base_ms + HOUR)
    exact = client.query(
        f"SELECT count(), avg(value), min(value), max(value), quantileExactInclusive(0.5)(value) "
        f"FROM {db}.readings WHERE metric = 'temperature'"
    ).result_rows[0]
    for resolution in ("raw", "1m", "1h", "auto"):
        stats = queries.fleet_stats(client, db, start, end, resolution=resolution)
        by_key = {(s["device_type"], s["metric"]): s for s in stats}
        assert set(by_key) == {("climate", "temperature"), ("climate", "humidity"), ("pump", "pressure")}
        t = by_key[("climate", "temperature")]
        assert t["count"] == exact[0] and t["mean"] == pytest.approx(exact[1])
        assert (t["min"], t["max"]) == (exact[2], exact[3])
        assert t["p50"] == pytest.approx(exact[4], abs=0.5) and t["p50"] <= t["p95"] <= t["p99"] <= t["max"]
        assert by_key[("pump", "pressure")]["count"] == 5
    only = queries.fleet_stats(client, db, start, end, device_type="pump", metric="pressure")
    assert [(s["device_type"], s["metric"], s["count"]) for s in only] == [("pump", "pressure", 5)]

    top = queries.top_devices(client, db, start, end, by="deviation", limit=3, device_type="climate")
    assert top[0]["device_id"] == "dev-4" and top[0]["metric"] == "temperature" and top[0]["score"] > 1.5
    assert len(top) == 3 and all(t["device_type"] == "climate" for t in top)


def _alert(
    alert_id: str,
    device: str,
    state: str,
    first: int,
    last: int,
    severity: str = "warning",
    rule: str = "threshold",
    resolved_at: int | None = None,
) -> tuple:
    a = Alert(
        alert_id=alert_id,
        device_id=device,
        device_type="climate",
        metric="temperature",
        rule=rule,
        severity=severity,
        state=state,
        value=42.0,
        expected_min=0.0,
        expected_max=30.0,
        first_seen=first,
        last_seen=last,
        resolved_at=resolved_at,
        message=f"{rule} on {device}",
    )
    return decode_alert(a.model_dump_json().encode())[0]


def test_alert_history_latest_state_filters_and_top_by_alerts(ch, base_ms):
    client, db = ch
    rows = [
        _alert("a1", "dev-1", "open", base_ms, base_ms),
        _alert("a1", "dev-1", "resolved", base_ms, base_ms + 5 * MIN, resolved_at=base_ms + 5 * MIN),
        _alert("a1", "dev-1", "open", base_ms, base_ms + 2 * MIN),  # a late duplicate of an older event
        _alert("a2", "dev-1", "open", base_ms + 10 * MIN, base_ms + 10 * MIN, severity="critical"),
        _alert("a3", "dev-2", "open", base_ms + 20 * MIN, base_ms + 20 * MIN, rule="zscore"),
        _alert("a3", "dev-2", "open", base_ms + 20 * MIN, base_ms + 20 * MIN, rule="zscore"),  # redelivered
        _alert("old", "dev-3", "resolved", base_ms - 5 * HOUR, base_ms - 4 * HOUR, resolved_at=base_ms - 4 * HOUR),
    ]
    client.insert_arrow(f"{db}.alerts", alerts_arrow(rows))
    start, end = _dt(base_ms), _dt(base_ms + HOUR)
    got = queries.alert_history(client, db, start, end)
    assert [(a["alert_id"], a["state"]) for a in got] == [("a3", "open"), ("a2", "open"), ("a1", "resolved")]
    a1 = got[2]
    assert a1["resolved_at"] == base_ms + 5 * MIN and a1["first_seen"] == base_ms and a1["metric"] == "temperature"
    assert Alert.model_validate(a1)  # the fields of iotp.schema.Alert
    assert got[0]["resolved_at"] is None
    assert [a["alert_id"] for a in queries.alert_history(client, db, start, end, state="open")] == ["a3", "a2"]
    assert [a["alert_id"] for a in queries.alert_history(client, db, start, end, device_id="dev-1")] == ["a2", "a1"]
    assert [a["alert_id"] for a in queries.alert_history(client, db, start, end, rule="zscore")] == ["a3"]
    assert [a["alert_id"] for a in queries.alert_history(client, db, start, end, severity="critical")] == ["a2"]
    assert [a["alert_id"] for a in queries.alert_history(client, db, start, end, limit=1, offset=1)] == ["a2"]
    assert [a["alert_id"] for a in queries.alert_history(client, db, _dt(base_ms - 6 * HOUR), end)][-1] == "old"

    top = queries.top_devices(client, db, start, end, by="alerts")
    assert [(t["device_id"], t["score"], t["critical"], t["open"]) for t in top] == [
        ("dev-1", 2.0, 1, 1),
        ("dev-2", 1.0, 0, 1),
    ]


HOSTILE = ["x' OR '1'='1", "'; DROP TABLE readings; --", "dev-a\\' --", "{device_id:String}", "\x00", "a\nb"]


def test_parameters_treat_sql_ish_strings_as_values(ch, base_ms):
    client, db = ch
    insert_rows(client, db, _series_rows(base_ms)[:10], token="hostile")
    start, end = _dt(base_ms), _dt(base_ms + HOUR)
    for s in HOSTILE:
        assert queries.device_series(client, db, s, "temperature", start, end)["points"] == []
        assert queries.device_series(client, db, "dev-a", s, start, end, resolution="1m")["points"][0]["count"] == 0
        assert queries.device_series(client, db, s, s, start, end, resolution="raw")["points"] == []
        assert queries.fleet_stats(client, db, start, end, device_type=s) == []
        assert queries.fleet_stats(client, db, start, end, metric=s, resolution="1m") == []
        assert queries.top_devices(client, db, start, end, device_type=s) == []
        assert queries.top_devices(client, db, start, end, by="deviation", device_type=s) == []
        assert queries.alert_history(client, db, start, end, device_id=s, rule=s, severity=s, state=s) == []
        assert queries.ingest_check(client, db, s)["readings"] == 0
    assert queries.count_rows(client, db)["readings"] == 10
    assert queries.ingest_check(client, db, "dev-a")["rows"] == 10
    with pytest.raises(ValueError):
        queries.device_series(client, db, "dev-a", "temperature", start, end, resolution="5m; DROP")  # type: ignore


def test_count_rows_and_window_aggregates(ch, base_ms):
    client, db = ch
    from history.columns import aggregates_arrow
    from history.decode import decode_aggregate
    from iotp.schema import WindowAggregate

    agg = WindowAggregate(
        device_id="dev-a",
        device_type="climate",
        metric="temperature",
        window_s=60,
        start=base_ms,
        end=base_ms + MIN,
        count=6,
        min=1.0,
        max=3.0,
        mean=2.0,
        std=0.5,
    )
    row = decode_aggregate(agg.model_dump_json().encode())[0]
    client.insert_arrow(f"{db}.window_aggregates", aggregates_arrow([row]))
    client.insert_arrow(f"{db}.window_aggregates", aggregates_arrow([row]))  # redelivered: replaced on merge
    assert client.query(f"SELECT count() FROM {db}.window_aggregates FINAL").result_rows[0][0] == 1
    counts = queries.count_rows(client, db)
    assert set(counts) == {"readings", "rollup_1m", "rollup_1h", "window_aggregates", "alerts"}
    assert counts["readings"] == 0 and counts["window_aggregates"] >= 1
