"""The stream worker against the real broker and Redis (one worker shared by this module's tests)."""

from __future__ import annotations

import statistics
import uuid

import pytest

from iotp.topics import redis_names
from tests.stream_jobs.support import (
    Producer,
    TopicWatcher,
    device_hash,
    noise,
    now_ms,
    readings,
    redis_client,
)
from tests.support.waiting import until

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_window_values_late_and_dropped(stream_settings, stream_worker) -> None:
    settings = stream_settings
    device = uid("win")
    base = (now_ms() - 60_000) // 2000 * 2000  # an old 2 s window: it closes at the next tick
    r = redis_client(settings)
    stats = redis_names(settings).stats_key
    async with Producer(settings) as producer, TopicWatcher(settings) as watch:
        await producer.send(
            device,
            readings(
                [
                    (1, base + 100, {"temperature": 10.0}),
                    (2, base + 600, {"temperature": 12.0}),
                    (3, base + 1200, {"temperature": 14.0}),
                    (4, base + 2100, {"temperature": 20.0}),
                    (5, base + 1500, {"temperature": 13.0}),  # after the device passed the window end: late
                ]
            ),
        )

        def first_window():
            return [a for a in watch.aggregates(device) if a["start"] == base]

        [agg] = await until(first_window, timeout=60, message="the first window")
        assert (agg["end"], agg["window_s"], agg["metric"], agg["count"]) == (base + 2000, 2, "temperature", 4)
        assert (agg["min"], agg["max"], agg["late"]) == (10.0, 14.0, 1)
        assert agg["mean"] == pytest.approx(12.25)
        assert agg["std"] == pytest.approx(statistics.pstdev([10.0, 12.0, 14.0, 13.0]))
        second = await until(
            lambda: [a for a in watch.aggregates(device) if a["start"] == base + 2000],
            timeout=30,
            message="the second window",
        )
        assert second[0]["count"] == 1 and second[0]["mean"] == 20.0

        dropped_before = int(await r.hget(stats, "stream.dropped_late") or 0)
        await producer.send(device, readings([(6, base + 300, {"temperature": 99.0})]))  # window closed

        async def dropped():
            return int(await r.hget(stats, "stream.dropped_late") or 0) > dropped_before

        await until(dropped, timeout=30, message="stream.dropped_late counted")
        assert len(first_window()) == 1  # the closed window is not re-emitted
        fields = await r.hgetall(stats)
        for name in (
            "stream.records",
            "stream.readings",
            "stream.aggregates",
            "stream.late",
            "stream.lag",
            "stream.updated_ms",
        ):
            assert name in fields, name
    await r.aclose()


async def test_spike_gives_one_alert_then_one_resolve(stream_settings, stream_worker) -> None:
    settings = stream_settings
    device = uid("spike")
    names = redis_names(settings)
    values = [*noise(60), 60.0, 61.0, 60.5, *noise(30, seed=8)]
    t0 = now_ms() - 200_000
    rows = [(i + 1, t0 + i * 1000, {"humidity": v}) for i, v in enumerate(values)]
    r = redis_client(settings)
    async with Producer(settings) as producer, TopicWatcher(settings) as watch:
        for i in range(0, 62, 10):  # warm-up, and the spike's first reading
            await producer.send(device, readings(rows[i : min(i + 10, 61)]))
        opened = await until(lambda: watch.alerts(device, "zscore"), timeout=60, message="alert")
        assert len(opened) == 1 and opened[0]["state"] == "open"
        assert opened[0]["first_seen"] == t0 + 60_000
        alert_id = opened[0]["alert_id"]
        assert await r.hexists(names.open_alerts, alert_id)
        assert (await device_hash(r, settings, device))["open_alerts"] == "1"
        for i in range(61, len(rows), 10):
            await producer.send(device, readings(rows[i : i + 10]))

        async def all_processed():
            return (await device_hash(r, settings, device)).get("seq") == str(len(rows))

        await until(all_processed, timeout=60, message="all readings applied")
        events = await until(
            lambda: len(watch.alerts(device, "zscore")) >= 2 and watch.alerts(device, "zscore"),
            timeout=30,
            message="resolve",
        )
        assert [(e["state"], e["alert_id"]) for e in events] == [("open", alert_id), ("resolved", alert_id)]
        assert not await r.hexists(names.open_alerts, alert_id)
        assert (await device_hash(r, settings, device))["open_alerts"] == "0"
        assert {a["rule"] for a in watch.alerts(device)} <= {"zscore", "silence"}
    await r.aclose()


async def test_duplicates_and_out_of_order_leave_redis_correct(stream_settings, stream_worker) -> None:
    settings = stream_settings
    device = uid("dup")
    base = (now_ms() - 60_000) // 2000 * 2000
    r = redis_client(settings)
    async with Producer(settings) as producer, TopicWatcher(settings) as watch:
        await producer.send_together(
            device,
            [
                readings([(s, base + s * 100, {"temperature": float(s)}) for s in range(1, 6)]),
                readings([(3, base + 300, {"temperature": 33.0}), (5, base + 500, {"temperature": 55.0})]),  # dups
                readings([(10, base + 1000, {"temperature": 10.0})]),
                readings([(8, base + 800, {"temperature": 8.0})]),  # older than seq 10, arrives after it
            ],
        )

        async def final_state():
            h = await device_hash(r, settings, device)
            return h if h.get("seq") == "10" else None

        h = await until(final_state, timeout=60, message="seq 10 stored")
        [agg] = await until(
            lambda: [a for a in watch.aggregates(device) if a["start"] == base], timeout=30, message="window"
        )
        # seq 8 was processed after seq 10 and must not have overwritten it
        assert (float(h["m:temperature"]), h["ts"], h["status"]) == (10.0, str(base + 1000), "online")
        assert await r.zscore(redis_names(settings).fleet_index, device) == base + 1000
        # the window counts every distinct reading once: 1..5, 8, 10
        assert agg["count"] == 7
        assert agg["mean"] == pytest.approx((1 + 2 + 3 + 4 + 5 + 8 + 10) / 7)
        assert agg["max"] == 10.0
    await r.aclose()


async def test_silent_device_goes_offline_and_back(stream_settings, stream_worker) -> None:
    settings = stream_settings
    device = uid("quiet")
    r = redis_client(settings)
    async with Producer(settings) as producer, TopicWatcher(settings) as watch:
        t = now_ms()
        await producer.send(
            device, readings([(s, t - 2000 + s * 200, {"temperature": 21.0 + s / 10}) for s in range(1, 11)])
        )

        async def status(wanted):
            return (await device_hash(r, settings, device)).get("status") == wanted

        await until(lambda: status("offline"), timeout=30, message="offline")
        [silent] = watch.alerts(device, "silence") or await until(
            lambda: watch.alerts(device, "silence"), timeout=10, message="silence alert"
        )
        assert silent["state"] == "open" and silent["metric"] is None
        await producer.send(device, readings([(11, now_ms(), {"temperature": 21.5})]))
        await until(lambda: status("online"), timeout=30, message="back online")
        events = await until(
            lambda: len(watch.alerts(device, "silence")) >= 2 and watch.alerts(device, "silence"),
            timeout=30,
            message="resolved",
        )
        assert [e["state"] for e in events] == ["open", "resolved"]
        assert events[0]["alert_id"] == events[1]["alert_id"]
    await r.aclose()


async def test_no_silence_while_the_gateways_are_down(stream_settings, stream_worker) -> None:
    """A stale gateway heartbeat means the pipeline is down, not the device: no silence alert, no offline,
    and the pipeline status says so; once a gateway reports again, a device that stays quiet goes offline."""
    settings = stream_settings
    names = redis_names(settings)
    device = uid("held")
    r = redis_client(settings)
    await r.hset(names.stats_key, "gateway.updated_ms", now_ms() - 60_000)
    try:
        async with Producer(settings) as producer, TopicWatcher(settings) as watch:
            t = now_ms()
            rows = [(s, t - 2000 + s * 200, {"temperature": 21.0}) for s in range(1, 11)]
            await producer.send(device, readings(rows))
            await until(lambda: device_hash(r, settings, device), timeout=30, message="device state")

            async def worker_ticked_past(deadline_ms: int):
                stats = await r.hgetall(names.stats_key)
                held = stats.get("stream.upstream_alive") == "0"
                return held and int(stats.get("stream.updated_ms", 0)) > deadline_ms

            # the worker ran well past the device's silence deadline (1.5 s here) with the gateways down
            deadline = now_ms() + 6000
            await until(lambda: worker_ticked_past(deadline), timeout=30, message="worker ticking, held")
            assert int((await r.hgetall(names.stats_key))["stream.silence_held"]) >= 1
            assert not watch.alerts(device, "silence")
            assert (await device_hash(r, settings, device)).get("status") == "online"

            await r.hset(names.stats_key, "gateway.updated_ms", now_ms() + 600_000)  # a gateway reports
            await until(lambda: watch.alerts(device, "silence"), timeout=30, message="silence once live again")
    finally:
        await r.hdel(names.stats_key, "gateway.updated_ms")
        await r.aclose()
