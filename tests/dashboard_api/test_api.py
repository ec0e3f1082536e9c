"""REST API against a real API process, real Redis, Kafka and embedded ClickHouse."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest
import websockets

from iotp.kafka import make_producer
from iotp.schema import encode_batch
from tests.dashboard_api.conftest import make_alert, now_ms, open_alert, seed_device
from tests.support.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.integration


def uid() -> str:
    return uuid.uuid4().hex[:8]


# --- auth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/devices", "/api/alerts", "/api/pipeline", "/api/fleet/summary", "/api/devices/x/history?metric=temperature"],
)
def test_rest_needs_the_token(api, path):
    assert httpx.get(api.api_url + path).status_code == 401
    resp = httpx.get(api.api_url + path, headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401
    assert resp.json()["detail"] == "missing or wrong API token"
    assert httpx.get(api.api_url + path, headers={"X-API-Token": api.api_token}).status_code != 401


def test_probes_need_no_token(api):
    assert httpx.get(api.api_url + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(api.api_url + "/health/ready").json()
    assert ready["status"] == "ok", ready


def test_post_needs_the_token(api):
    assert httpx.post(api.api_url + "/api/alerts/a1/ack").status_code == 401


@pytest.mark.parametrize("how", ["none", "wrong header", "query string"])
async def test_websocket_refuses_missing_or_wrong_token(api, how):
    """A token in the query string is refused even when right: it would land in access logs."""
    url = api.api_url.replace("http", "ws") + "/ws"
    headers = {}
    if how == "wrong header":
        headers = {"Authorization": "Bearer wrong"}
    elif how == "query string":
        url += f"?token={api.api_token}"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, additional_headers=headers):
            pass
    assert info.value.response.status_code == 401


async def test_websocket_refuses_unknown_channel(api):
    url = api.api_url.replace("http", "ws") + "/ws?channels=readings,bogus"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, additional_headers={"X-API-Token": api.api_token}):
            pass
    assert info.value.response.status_code == 400
    assert b"bogus" in info.value.response.body


def test_openapi_documents_the_endpoints(api):
    paths = httpx.get(api.api_url + "/openapi.json").json()["paths"]
    for path in (
        "/api/devices",
        "/api/devices/{device_id}",
        "/api/devices/{device_id}/history",
        "/api/analytics/fleet",
        "/api/analytics/top",
        "/api/alerts",
        "/api/alerts/history",
        "/api/alerts/{alert_id}/ack",
        "/api/pipeline",
        "/api/fleet/summary",
        "/health/ready",
    ):
        assert path in paths, path


# --- fleet --------------------------------------------------------------------------------------------------


def test_fleet_filters_and_pagination(http, rds, names):
    t1, t2 = f"ta{uid()}", f"tb{uid()}"
    stale = now_ms() - 3_600_000
    for i in range(7):
        seed_device(rds, names, f"{t1}-{i}", t1, seq=i + 1, temperature=20.0 + i)
    seed_device(rds, names, f"{t2}-on", t2)
    seed_device(rds, names, f"{t2}-off", t2, status="offline")
    seed_device(rds, names, f"{t2}-stale", t2, last_seen=stale)  # silent for an hour: shown offline
    open_alert(rds, names, make_alert(f"{t1}-3", device_type=t1), publish=False)

    page1 = http.get("/api/devices", params={"type": t1, "limit": 3}).json()
    page3 = http.get("/api/devices", params={"type": t1, "limit": 3, "offset": 6}).json()
    assert page1["total"] == 7 and page1["limit"] == 3 and page1["offset"] == 0
    assert [d["device_id"] for d in page1["items"]] == [f"{t1}-0", f"{t1}-1", f"{t1}-2"]
    assert [d["device_id"] for d in page3["items"]] == [f"{t1}-6"]
    assert page1["items"][1]["metrics"] == {"temperature": 21.0}

    offline = http.get("/api/devices", params={"type": t2, "status": "offline"}).json()
    assert sorted(d["device_id"] for d in offline["items"]) == [f"{t2}-off", f"{t2}-stale"]
    online = http.get("/api/devices", params={"type": t2, "status": "online"}).json()
    assert [d["device_id"] for d in online["items"]] == [f"{t2}-on"]

    alerting = http.get("/api/devices", params={"type": t1, "has_alerts": "true"}).json()
    assert [(d["device_id"], d["open_alerts"]) for d in alerting["items"]] == [(f"{t1}-3", 1)]
    assert http.get("/api/devices", params={"type": t1, "has_alerts": "false"}).json()["total"] == 6

    everything = http.get("/api/devices", params={"limit": 1000}).json()
    assert everything["total"] >= 10
    ids = [d["device_id"] for d in everything["items"]]
    assert ids == sorted(ids)

    summary = http.get("/api/fleet/summary").json()
    assert summary["by_type"][t2] == {"total": 3, "online": 1, "offline": 2, "alerting": 0}
    assert summary["by_type"][t1]["alerting"] == 1


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": 5000}, "less than or equal to 1000"),
        ({"offset": -1}, "greater than or equal to 0"),
        ({"status": "sleeping"}, "online"),
        ({"type": "Bad Type"}, "pattern"),
        ({"has_alerts": "maybe"}, "boolean"),
    ],
)
def test_fleet_list_rejects_bad_params(http, params, fragment):
    resp = http.get("/api/devices", params=params)
    assert resp.status_code == 422
    assert fragment in resp.text


def test_device_state_and_bad_ids(http, rds, names):
    device = f"dev-{uid()}"
    seed_device(rds, names, device, seq=42, temperature=23.25, humidity=40.0)
    state = http.get(f"/api/devices/{device}").json()
    assert state["seq"] == 42 and state["metrics"] == {"temperature": 23.25, "humidity": 40.0}
    assert state["status"] == "online" and state["open_alerts"] == 0
    missing = http.get("/api/devices/no-such-device")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    assert http.get("/api/devices/bad%20id!").status_code == 422
    assert http.get("/api/devices/" + "x" * 80).status_code == 422


# --- history ------------------------------------------------------------------------------------------------


async def test_history_from_clickhouse_via_the_embedded_sink(api, http):
    """Readings produced to the real readings topic reach ClickHouse through the API's sink."""
    device = f"hist-{uid()}"
    base = now_ms() - 120_000
    readings = [
        {
            "id": f"{device}:{s}",
            "seq": s,
            "ts": base + s * 1000,
            "rx": base + s * 1000,
            "metrics": {"temperature": 20.0 + s, "humidity": 50.0},
        }
        for s in range(1, 31)
    ]
    await _produce(api, api.topic_readings, [(device, encode_batch(device, "climate", readings))])

    async def stored():
        resp = await _aget(api, f"/api/devices/{device}/history", {"metric": "temperature", "range": "1h"})
        return resp if len(resp["points"]) >= 30 else None

    series = await async_wait_for(stored, timeout=60, message="history points")
    # 30 readings in the range and max_points 1000: auto picks the raw rows.
    assert series["resolution"] == "raw"
    assert [p["value"] for p in series["points"]] == [20.0 + s for s in range(1, 31)]

    def rolled_up():  # the 1 min rollup is fed by History's materialized view on the raw table
        minutes = http.get(f"/api/devices/{device}/history", params={"metric": "temperature", "resolution": "1m"})
        assert minutes.json()["resolution"] == "1m"
        buckets = [p for p in minutes.json()["points"] if p["count"]]
        return buckets if sum(p["count"] for p in buckets) >= 30 else None

    buckets = wait_for(rolled_up, timeout=30, interval=0.5, message="the 30 readings in the 1 min rollup")
    assert sum(p["count"] for p in buckets) == 30 and 1 <= len(buckets) <= 2  # 30 s may straddle a minute
    assert min(p["min"] for p in buckets) == 21.0 and max(p["max"] for p in buckets) == 50.0
    raw = http.get(f"/api/devices/{device}/history", params={"metric": "temperature", "resolution": "raw"}).json()
    assert len(raw["points"]) == 30 and raw["resolution"] == "raw"
    assert all(raw["start"] <= p["ts"] < raw["end"] for p in raw["points"])
    assert http.get(f"/api/devices/{device}/history", params={"metric": "nosuch"}).json()["points"] == []


async def _produce(api, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Produce (key, value) records to a real pipeline topic, as the gateway or the stream jobs would."""
    producer = make_producer(api)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def _aget(api, path, params):
    async with httpx.AsyncClient(base_url=api.api_url, headers={"X-API-Token": api.api_token}, timeout=20) as c:
        resp = await c.get(path, params=params)
        resp.raise_for_status()
        return resp.json()


def test_history_downsampled_resolutions(http):
    """Explicit rollup resolutions come back bucketed and gap-filled (value null in empty buckets)."""
    week = http.get(
        "/api/devices/quiet-device/history",
        params={"metric": "temperature", "range": "7d", "resolution": "1h", "max_points": 200},
    )
    assert week.status_code == 200, week.text
    body = week.json()
    assert body["resolution"] == "1h" and 168 <= len(body["points"]) <= 169
    assert all(p["value"] is None and p["count"] == 0 for p in body["points"])
    steps = {b["ts"] - a["ts"] for a, b in zip(body["points"], body["points"][1:], strict=False)}
    assert steps == {3_600_000}
    hour = http.get("/api/devices/quiet-device/history", params={"metric": "temperature", "resolution": "1m"}).json()
    assert hour["resolution"] == "1m" and 60 <= len(hour["points"]) <= 61


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({}, "metric"),
        ({"metric": "Temp!"}, "pattern"),
        (
            {"metric": "temperature", "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            "start must be before end",
        ),
        ({"metric": "temperature", "start": "2026-01-01T00:00:00"}, "timezone"),
        (
            {"metric": "temperature", "start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            "longer than 31 days",
        ),
        ({"metric": "temperature", "start": "2026-01-01T00:00:00Z", "range": "1h"}, "either start or range"),
        ({"metric": "temperature", "range": "2y"}, "range"),
        ({"metric": "temperature", "start": "yesterday"}, "datetime"),
        ({"metric": "temperature", "resolution": "5s"}, "resolution"),
        ({"metric": "temperature", "max_points": 1}, "max_points"),
    ],
)
def test_history_rejects_bad_ranges_and_params(http, params, fragment):
    resp = http.get("/api/devices/some-device/history", params=params)
    assert resp.status_code == 422, resp.text
    assert fragment in resp.text


# --- alerts -------------------------------------------------------------------------------------------------


async def test_open_alerts_filters_and_acknowledge_is_stored_and_broadcast(api, http, rds, names):
    device = f"alrt-{uid()}"
    seed_device(rds, names, device)
    critical = make_alert(device, rule="threshold", severity="critical")
    warning = make_alert(device, rule="zscore", severity="warning", metric="humidity")
    for alert in (critical, warning):
        open_alert(rds, names, alert, publish=False)

    listed = http.get("/api/alerts", params={"device_id": device}).json()
    assert listed["total"] == 2 and {a["alert_id"] for a in listed["items"]} == {
        critical["alert_id"],
        warning["alert_id"],
    }
    only = http.get("/api/alerts", params={"device_id": device, "severity": "warning"}).json()
    assert [a["rule"] for a in only["items"]] == ["zscore"]
    assert http.get("/api/alerts", params={"device_id": device, "rule": "threshold"}).json()["total"] == 1
    assert http.get("/api/alerts", params={"severity": "fatal"}).status_code == 422

    ws_url = api.api_url.replace("http", "ws") + f"/ws?channels=alerts&devices={device}"
    async with websockets.connect(ws_url, additional_headers={"X-API-Token": api.api_token}) as ws:
        async with httpx.AsyncClient(base_url=api.api_url, headers={"X-API-Token": api.api_token}) as c:
            resp = await c.post(f"/api/alerts/{critical['alert_id']}/ack", json={"by": "alice", "note": "on it"})
        assert resp.status_code == 200, resp.text
        result = resp.json()
        assert result["created"] is True and result["ack"]["by"] == "alice"
        frame = orjson.loads(await asyncio_wait(ws.recv(), 10))
    assert frame["channel"] == "alerts"
    assert frame["data"]["event"] == "ack" and frame["data"]["alert_id"] == critical["alert_id"]
    assert frame["data"]["ack"]["by"] == "alice" and frame["data"]["ack"]["note"] == "on it"

    stored = orjson.loads(rds.hget(names.alert_acks, critical["alert_id"]))
    assert stored["by"] == "alice" and stored["note"] == "on it" and abs(stored["at"] - now_ms()) < 60_000

    again = http.post(f"/api/alerts/{critical['alert_id']}/ack", json={"by": "bob"}).json()
    assert again["created"] is False and again["ack"]["by"] == "alice"

    acked = http.get("/api/alerts", params={"device_id": device, "acked": "true"}).json()
    assert [a["alert_id"] for a in acked["items"]] == [critical["alert_id"]]
    assert acked["items"][0]["ack"]["by"] == "alice"
    unacked = http.get("/api/alerts", params={"device_id": device, "acked": "false"}).json()
    assert [a["alert_id"] for a in unacked["items"]] == [warning["alert_id"]]

    missing = http.post("/api/alerts/no-such-alert/ack")
    assert missing.status_code == 404 and "no open alert" in missing.json()["detail"]
    assert http.post("/api/alerts/bad%20id/ack").status_code == 422
    assert http.post(f"/api/alerts/{warning['alert_id']}/ack", json={"by": ""}).status_code == 422


async def asyncio_wait(awaitable, timeout):
    import asyncio

    return await asyncio.wait_for(awaitable, timeout)


async def test_alert_history(api, http):
    """An alert produced to the alerts topic reaches ClickHouse through the sink and comes back, filtered."""
    device = f"ah-{uid()}"
    opened = make_alert(device, rule="threshold", severity="critical", value=77.0)
    resolved = {**opened, "state": "resolved", "resolved_at": opened["first_seen"] + 5_000}
    await _produce(api, api.topic_alerts, [(device, orjson.dumps(opened)), (device, orjson.dumps(resolved))])

    def history(**params):
        resp = http.get("/api/alerts/history", params={"range": "24h", "device_id": device, **params})
        assert resp.status_code == 200, resp.text
        return resp.json()["items"]

    def stored_resolved():
        items = history()
        return items if items and items[0]["state"] == "resolved" else None

    items = wait_for(stored_resolved, timeout=60, interval=0.5, message="the resolved alert in ClickHouse")
    assert len(items) == 1, items  # one alert, in its latest state
    alert = items[0]
    assert alert["alert_id"] == opened["alert_id"] and alert["rule"] == "threshold" and alert["value"] == 77.0
    assert alert["first_seen"] == opened["first_seen"] and alert["resolved_at"] == resolved["resolved_at"]
    assert [a["alert_id"] for a in history(severity="critical", state="resolved")] == [opened["alert_id"]]
    assert history(severity="warning") == [] and history(state="open") == []
    assert http.get("/api/alerts/history", params={"state": "closed"}).status_code == 422
    assert http.get("/api/alerts/history", params={"limit": 100000}).status_code == 422


# --- analytics ----------------------------------------------------------------------------------------------


async def test_analytics(api, http):
    """Fleet statistics and the deviation ranking over readings of a device type of this test's own."""
    device_type = f"an{uid()}"
    base = now_ms() - 120_000
    values = {f"{device_type}-0": [19.0, 21.0] * 5, f"{device_type}-1": [20.0] * 10, f"{device_type}-2": [40.0] * 10}
    records = []
    for device, temps in values.items():
        readings = [
            {"id": f"{device}:{i}", "seq": i, "ts": base + i * 1000, "rx": base + i * 1000, "metrics": {"temp": t}}
            for i, t in enumerate(temps, start=1)
        ]
        records.append((device, encode_batch(device, device_type, readings)))
    await _produce(api, api.topic_readings, records)

    def fleet():
        resp = http.get("/api/analytics/fleet", params={"range": "1h", "type": device_type})
        assert resp.status_code == 200, resp.text
        rows = resp.json()["items"]
        return rows if rows and rows[0]["count"] >= 30 else None

    (row,) = wait_for(fleet, timeout=60, interval=0.5, message="fleet statistics of the 30 readings")
    assert row["device_type"] == device_type and row["metric"] == "temp" and row["count"] == 30
    assert row["mean"] == pytest.approx(80.0 / 3) and row["min"] == 19.0 and row["max"] == 40.0
    assert row["min"] <= row["p50"] <= row["p95"] <= row["p99"] <= row["max"]
    top = http.get("/api/analytics/top", params={"range": "24h", "by": "deviation", "type": device_type}).json()
    ranked = top["items"]
    assert [d["device_id"] for d in ranked][:1] == [f"{device_type}-2"] and len(ranked) == 3
    assert ranked[0]["metric"] == "temp" and ranked[0]["mean"] == 40.0 and ranked[0]["score"] > 1.0

    stats = http.get("/api/analytics/fleet", params={"range": "1h", "type": "climate"})
    top = http.get("/api/analytics/top", params={"range": "24h", "by": "deviation", "limit": 5})
    assert http.get("/api/analytics/top", params={"by": "loudness"}).status_code == 422
    assert (
        http.get(
            "/api/analytics/fleet", params={"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
        ).status_code
        == 422
    )
    assert stats.status_code == 200, stats.text
    assert top.status_code == 200, top.text
    assert top.json()["by"] == "deviation"


# --- pipeline -----------------------------------------------------------------------------------------------


def test_pipeline_counters_rates_lag_and_deadletters(http, rds, names):
    now = now_ms()
    rds.hset(
        names.stats_key,
        mapping={
            "gateway.received": 1000,
            "gateway.forwarded": 990,
            "gateway.rejected": 10,
            "stream.records": 500,
            "stream.lag": 42,
            "stream.updated_ms": now,
            "sink.rows": 3000,
            "sink.lag": 7,
        },
    )
    first = http.get("/api/pipeline").json()
    stages = {s["stage"]: s for s in first["stages"]}
    assert [s["stage"] for s in first["stages"]][:3] == ["gateway", "stream", "sink"]
    assert stages["gateway"]["counters"]["received"] == 1000
    assert stages["stream"]["lag"] == 42 and stages["sink"]["lag"] == 7
    assert stages["stream"]["updated_ms"] == now
    assert first["deadletter"]["gateway.rejected"] == 10
    assert "clients" in first["websocket"]

    def rates_move():
        rds.hincrby(names.stats_key, "gateway.received", 500)
        rds.hincrby(names.stats_key, "gateway.rejected", 5)
        body = http.get("/api/pipeline").json()
        gw = next(s for s in body["stages"] if s["stage"] == "gateway")
        return body if gw["rates"]["received"] > 0 and body["window_s"] > 0 else None

    body = wait_for(rates_move, timeout=15, interval=0.5, message="a positive rate")
    gw = next(s for s in body["stages"] if s["stage"] == "gateway")
    assert gw["rates"]["received"] > gw["rates"]["rejected"] > 0
    assert body["deadletter"]["gateway.rejected"] > 10
