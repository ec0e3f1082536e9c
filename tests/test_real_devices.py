"""Issue 11, end to end with real services (MQTT -> gateway -> Kafka -> stream -> Redis, Kafka -> ClickHouse
-> API): a device that reboots (seq restarts), a device without seq, and buffered uploads (backfill)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from iotp.schema import now_ms
from iotp.topics import mqtt_topic
from tests.gateway.helpers import read_until
from tests.support.mqtt_publish import publish_payloads, publish_readings, reading
from tests.support.waiting import async_wait_for, wait_api_ready

pytestmark = pytest.mark.integration


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def no_seq(device_id: str, ts: int, **metrics: float) -> dict:
    r = reading(device_id, 0, ts_ms=ts, **metrics)
    del r["seq"]
    return r


async def test_reboot_no_seq_and_backfill_end_to_end(isolated_settings, processes):
    settings = isolated_settings
    procs = [processes.start(name) for name in ("gateway", "stream", "api")]
    tag = uuid.uuid4().hex[:6]
    headers = {"Authorization": f"Bearer {settings.api_token}"}
    async with httpx.AsyncClient(base_url=settings.api_url, headers=headers, timeout=20) as http:
        await wait_api_ready(http)

        async def check(prefix: str) -> dict:
            resp = await http.get("/api/pipeline/ingest-check", params={"device_prefix": prefix})
            resp.raise_for_status()
            return resp.json()

        async def counters() -> dict[str, float]:
            health = (await http.get("/api/pipeline")).json()
            return {f"{s['stage']}.{k}": v for s in health["stages"] for k, v in s["counters"].items()}

        now = now_ms()

        # 1. reboot: seq 1..100, then seq 1..50 again with later times and new values
        rb = f"rb-{tag}"
        first = [reading(rb, i, ts_ms=now - 250_000 + i * 1000, temperature=20.0) for i in range(1, 101)]
        second = [reading(rb, i, ts_ms=now - 100_000 + i * 1000, temperature=25.0 + i / 100) for i in range(1, 51)]
        await asyncio.to_thread(publish_readings, settings, first)
        await asyncio.to_thread(publish_readings, settings, second)

        async def reboot_stored():
            got = await check(f"{rb}")
            return got if got["readings"] >= 150 else None

        try:
            got = await async_wait_for(reboot_stored, timeout=90, message="150 readings of the rebooted device stored")
        except AssertionError:
            print(await check(rb), await counters())
            for p in procs:
                print(p.output()[-3000:])
            raise
        assert (got["readings"], got["duplicate_rows"], got["missing_in_sequence"]) == (150, 0, 0)

        async def latest_is_after_reboot():
            state = (await http.get(f"/api/devices/{rb}")).json()
            return state if state.get("ts") == second[-1]["ts"] else None

        state = await async_wait_for(latest_is_after_reboot, timeout=60, message="latest = newest after reboot")
        assert state["seq"] == 50 and state["metrics"]["temperature"] == 25.5

        async def stream_counted():
            c = await counters()
            return c if c.get("stream.readings", 0) >= 150 else None

        c = await async_wait_for(stream_counted, timeout=30, message="the stream counted the reboot readings")
        assert (c["stream.readings"], c.get("stream.duplicates", 0)) == (150, 0)  # none taken for duplicates

        # 2. a device without seq: two readings in one millisecond, one more, and a redelivered message
        ns = f"ns-{tag}"
        ns_readings = [no_seq(ns, now - 5000, temperature=21.0), no_seq(ns, now - 5000, temperature=22.0)]
        ns_readings.append(no_seq(ns, now - 4000, temperature=23.0))
        stats_before = await counters()
        await asyncio.to_thread(publish_readings, settings, ns_readings)
        await asyncio.to_thread(publish_readings, settings, ns_readings[:1])  # the device sent it again

        async def no_seq_counted():
            c = await counters()
            return c if c.get("stream.duplicates", 0) - stats_before.get("stream.duplicates", 0) >= 1 else None

        after = await async_wait_for(no_seq_counted, timeout=60, message="the redelivered reading deduplicated")
        assert after["stream.duplicates"] - stats_before.get("stream.duplicates", 0) == 1
        assert after["stream.readings"] - stats_before.get("stream.readings", 0) >= 3

        async def no_seq_stored():
            got = await check(ns)
            return got if got["rows"] >= 4 else None

        got = await async_wait_for(no_seq_stored, timeout=60, message="the seq-less readings stored")
        # 3 distinct readings; the second copy reached the raw table as a row of its own and is reported
        assert (got["readings"], got["rows"], got["duplicate_rows"], got["missing_in_sequence"]) == (3, 4, 1, 0)
        ns_state = (await http.get(f"/api/devices/{ns}")).json()
        assert ns_state["seq"] is None and ns_state["ts"] == now - 4000

        # 3. backfill: a live reading, then an upload of an hour-old minute (values that would alert)
        bf = f"bf-{tag}"
        live = reading(bf, 1000, ts_ms=now_ms(), temperature=21.0)
        await asyncio.to_thread(publish_readings, settings, [live])
        hour_ago = (now - 3_600_000) // 60_000 * 60_000
        old = [reading(bf, i, ts_ms=hour_ago + i * 1000, temperature=50.0 + i % 7) for i in range(60)]
        topic = mqtt_topic(settings, "climate", bf)
        await asyncio.to_thread(
            publish_payloads, settings, [(topic, orjson.dumps(old[i : i + 20])) for i in (0, 20, 40)]
        )
        # too old for the bound (7 days): dead letter, reason too_old
        ancient = reading(bf, 5000, ts_ms=now - 8 * 86_400_000, temperature=21.0)
        await asyncio.to_thread(publish_payloads, settings, [(topic, orjson.dumps(ancient))])
        # one more live reading, so the live window after the upload closes and shows the worker got past it
        await asyncio.to_thread(
            publish_readings, settings, [reading(bf, 1001, ts_ms=live["ts"] + 2000, temperature=21.2)]
        )

        async def backfill_stored():
            got = await check(bf)
            return got if got["readings"] >= 62 else None

        got = await async_wait_for(backfill_stored, timeout=90, message="backfill stored in the raw table")
        assert (got["readings"], got["duplicate_rows"]) == (62, 0)
        params = {
            "metric": "temperature",
            "resolution": "1m",
            "start": iso(hour_ago - 60_000),
            "end": iso(hour_ago + 120_000),
        }
        series = (await http.get(f"/api/devices/{bf}/history", params=params)).json()
        assert [(p["ts"], p["count"]) for p in series["points"] if p["count"]] == [(hour_ago, 60)]
        assert max(p["max"] for p in series["points"] if p["count"]) == 56.0

        async def counted():
            c = await counters()
            return c if c.get("stream.backfill", 0) >= 60 and c.get("gateway.backfill", 0) >= 60 else None

        c = await async_wait_for(counted, timeout=60, message="backfill counted by the gateway and the stream")
        assert (c["gateway.backfill"], c["stream.backfill"]) == (60, 60)

        dlq = await read_until(settings, settings.topic_deadletter, lambda recs: len(recs) >= 1, 60)
        [dead] = [m for m in dlq if m.key == bf.encode()]
        reasons = dict(dead.headers)
        assert reasons["reason"] == b"too_old" and b"IOTP_GATEWAY_MAX_BACKFILL_S" in reasons["detail"]

        # the stream kept them out of windows and detectors; the latest state is the live reading
        records = await read_until(
            settings,
            settings.topic_aggregates,
            lambda recs: any(orjson.loads(m.value)["device_id"] == bf for m in recs),
            60,
        )
        aggregates = [a for a in (orjson.loads(m.value) for m in records) if a["device_id"] == bf]
        assert aggregates and all(a["start"] >= live["ts"] - 60_000 for a in aggregates), aggregates
        alerts = await read_until(settings, settings.topic_alerts, lambda recs: False, 2)
        bad = [a for a in (orjson.loads(m.value) for m in alerts) if a["device_id"] == bf and a["rule"] != "silence"]
        assert bad == [], [(a["rule"], a["metric"], a["value"], a["first_seen"], a["state"], a["message"]) for a in bad]
        bf_state = (await http.get(f"/api/devices/{bf}")).json()
        assert bf_state["seq"] in (1000, 1001) and bf_state["metrics"]["temperature"] in (21.0, 21.2)
