"""Unit tests (no Kafka, no Redis): when windows close. Live devices close theirs on event time, spread over
their reporting phases; the wall clock (the timer's tick) only closes the windows of idle devices. Before,
the first tick after ``end + grace`` closed every device's windows at once: one flush of the whole fleet's
aggregates, which every reading in flight waited for."""

from __future__ import annotations

import orjson

from iotp.settings import Settings
from stream_jobs.engine import Effects, Engine
from tests.stream_jobs.test_detectors import RULES, T0

LATENCY_MS = 300  # sensor -> stream worker
DEVICES = 100


def _reading_record(device: str, seq: int, ts: int) -> bytes:
    reading = {"id": f"{device}:{ts}:{seq}", "seq": seq, "ts": ts, "rx": ts, "metrics": {"humidity": 45.0 + seq % 3}}
    return orjson.dumps({"v": 1, "device_id": device, "device_type": "climate", "readings": [reading]})


def _engine() -> Engine:
    settings = Settings(_env_file=None)
    return Engine([10], settings.stream_window_grace_s, RULES, idle_close_s=settings.stream_window_idle_close_s)


def _run(engine: Engine, quiet_after_ms: int, until_ms: int) -> tuple[list[int], list[int], dict[str, int]]:
    """Every device reports once a second (device d at phase d * 10 ms) and the worker sees each reading
    LATENCY_MS later; the ``quiet`` device stops after ``quiet_after_ms``. The timer ticks every 500 ms.
    Returns the first window's aggregates closed per tick, per applied record, and per device."""
    events = []
    for d in range(DEVICES):
        for s in range(until_ms // 1000):
            ts = T0 + s * 1000 + d * 10
            events.append((ts + LATENCY_MS, 0, f"d{d:03d}", s + 1, ts))
    for s in range(quiet_after_ms // 1000):
        events.append((T0 + s * 1000 + LATENCY_MS, 0, "quiet", s + 1, T0 + s * 1000))
    events += [(T0 + t, 1, "", 0, 0) for t in range(0, until_ms, 500)]  # ticks
    per_tick, per_record, per_device = [], [], {}
    offset = 0
    for at, kind, device, seq, ts in sorted(events):
        fx = Effects()
        if kind == 1:
            engine.tick(at, {0}, fx)
        else:
            engine.apply(0, offset, _reading_record(device, seq, ts), at, fx, now_ms=at)
            offset += 1
        first = [a for a in fx.aggregates if a["start"] == T0]
        (per_tick if kind == 1 else per_record).append(len(first))
        for a in first:
            per_device[a["device_id"]] = per_device.get(a["device_id"], 0) + 1
    return per_tick, per_record, per_device


def test_live_devices_close_their_windows_on_event_time_not_all_in_one_tick():
    per_tick, per_record, per_device = _run(_engine(), quiet_after_ms=4000, until_ms=18_000)
    assert per_device == {f"d{d:03d}": 1 for d in range(DEVICES)} | {"quiet": 1}, "every window once"
    assert max(per_tick) <= 1, f"a tick closed {max(per_tick)} windows (only the quiet device's may)"
    assert sum(per_tick) == 1  # the quiet device's, on the wall clock
    assert max(per_record) == 1  # each live device's window closed by its own reading past end + grace


def test_an_idle_device_still_gets_its_window_from_the_wall_clock():
    engine = _engine()
    _, _, per_device = _run(engine, quiet_after_ms=3000, until_ms=0)  # only the quiet device
    assert per_device == {}  # not yet: end + grace (15 s) has not come
    fx = Effects()
    engine.tick(T0 + 15_000, {0}, fx)
    assert [(a["device_id"], a["count"]) for a in fx.aggregates] == [("quiet", 3)]
