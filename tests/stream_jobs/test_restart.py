"""A worker killed mid-stream (SIGKILL) and restarted: window and detector state survive through the
Redis snapshot, no alert is lost or duplicated, and the window spanning the restart is complete."""

from __future__ import annotations

import pytest

from iotp.topics import redis_names
from tests.stream_jobs.conftest import stream_test_settings
from tests.stream_jobs.support import Producer, TopicWatcher, device_hash, noise, now_ms, readings, redis_client
from tests.support.processes import ProcessGroup
from tests.support.waiting import until

pytestmark = pytest.mark.integration

STEP_MS = 80


@pytest.fixture
def restart_settings(stack_settings):
    return stream_test_settings(stack_settings, stream_windows_s=[10], stream_window_grace_s=300.0)


async def test_worker_restart_mid_stream_loses_no_alert(restart_settings, tmp_path) -> None:
    settings = restart_settings
    group = ProcessGroup(settings, tmp_path / "logs")
    device = "restart-1"
    names = redis_names(settings)
    spike = [60.0, 61.0, 60.5]
    values = [
        *noise(40),
        *spike,
        *noise(3, seed=2),  # phase 1: warm-up, spike 1 opens
        *noise(30, seed=3),
        *spike,
        *noise(30, seed=4),
    ]  # phase 2 (worker down): resolve, spike 2
    base = (now_ms() - 100_000) // 10_000 * 10_000
    rows = [(i + 1, base + 100 + i * STEP_MS, {"humidity": v}) for i, v in enumerate(values)]
    r = redis_client(settings)
    try:
        async with Producer(settings) as producer, TopicWatcher(settings) as watch:
            worker = group.start("stream")
            for i in range(0, 46, 10):
                await producer.send(device, readings(rows[i : min(i + 10, 46)]))
            [first] = await until(lambda: watch.alerts(device, "zscore"), timeout=90, message="spike 1 alert")

            async def phase1_applied():
                return (await device_hash(r, settings, device)).get("seq") == "46" and await r.hexists(
                    names.open_alerts, first["alert_id"]
                )

            await until(phase1_applied, timeout=30, message="phase 1 applied")
            worker.kill9()

            for i in range(46, len(rows), 10):
                await producer.send(device, readings(rows[i : i + 10]))
            group.start("stream")
            # a reading far beyond end + grace closes the window on event time
            await producer.send(device, readings([(len(rows) + 1, base + 10_000 + 300_001, {"humidity": 45.0})]))

            def window():
                return [a for a in watch.aggregates(device) if a["start"] == base and a["window_s"] == 10]

            [agg] = await until(window, timeout=120, message="the window spanning the restart")
            assert agg["count"] == len(rows) and agg["late"] == 0

            def zscore_events():
                events = watch.alerts(device, "zscore")
                return events if sum(e["state"] == "resolved" for e in events) >= 2 else None

            events = await until(zscore_events, timeout=30, message="both spikes resolved")
            ids = list(dict.fromkeys(e["alert_id"] for e in events))
            assert len(ids) == 2 and ids[0] == first["alert_id"]
            assert sorted((ids.index(e["alert_id"]), e["state"]) for e in events) == [
                (0, "open"),
                (0, "resolved"),
                (1, "open"),
                (1, "resolved"),
            ]
            assert events[1]["first_seen"] == rows[40][1]  # the resolve continues the pre-crash alert
            assert not await r.hexists(names.open_alerts, first["alert_id"])
            assert len(window()) == 1
    finally:
        await r.aclose()
        group.stop_all()
