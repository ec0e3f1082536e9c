"""Unit tests of the pure window logic (no Kafka, no Redis)."""

from __future__ import annotations

import math
import statistics

import orjson
import pytest

from iotp.schema import WindowAggregate
from stream_jobs.windows import ACCEPTED, DROPPED, LATE, DeviceWindows

T0 = 1_700_000_000_000  # aligned to 10 s


def test_window_values_match_hand_computed() -> None:
    w = DeviceWindows("d1", "climate", [10], grace_s=5)
    values = [20.0, 22.0, 21.0, 25.0]
    for i, v in enumerate(values):
        assert w.add(T0 + i * 1000, {"temperature": v}) == ACCEPTED
    assert w.due(T0 + 14_999) == []  # grace not over
    [agg] = w.due(T0 + 15_000)
    WindowAggregate.model_validate(agg)
    assert (agg["start"], agg["end"], agg["window_s"], agg["count"]) == (T0, T0 + 10_000, 10, 4)
    assert (agg["min"], agg["max"]) == (20.0, 25.0)
    assert agg["mean"] == pytest.approx(22.0)
    assert agg["std"] == pytest.approx(statistics.pstdev(values))
    assert agg["late"] == 0


def test_event_time_closes_and_late_and_dropped() -> None:
    w = DeviceWindows("d1", "climate", [10], grace_s=2)
    w.add(T0 + 1000, {"x": 1.0})
    w.add(T0 + 10_500, {"x": 5.0})  # next window: watermark passes the first end
    assert w.add(T0 + 9000, {"x": 3.0}) == LATE  # within grace: counted, and counted as late
    assert w.due(None) == []
    w.add(T0 + 12_000, {"x": 6.0})  # watermark reaches end + grace: first window closes
    [agg] = w.due(None)
    assert (agg["start"], agg["count"], agg["late"], agg["mean"]) == (T0, 2, 1, 2.0)
    assert w.add(T0 + 9500, {"x": 9.0}) == DROPPED  # its window is gone
    [agg2] = w.due(T0 + 22_000)
    assert agg2["count"] == 2 and agg2["start"] == T0 + 10_000


def test_two_sizes_and_state_round_trip() -> None:
    w = DeviceWindows("d1", "power", [10, 60], grace_s=5)
    for i in range(30):
        w.add(T0 + i * 1000, {"voltage": 230.0 + i, "current": 1.0})
    w2 = DeviceWindows.from_state("d1", "power", [10, 60], 5, orjson.loads(orjson.dumps(w.to_state())))
    a = sorted((x["window_s"], x["start"], x["metric"], x["count"], x["mean"]) for x in w.due(T0 + 10**6))
    b = sorted((x["window_s"], x["start"], x["metric"], x["count"], x["mean"]) for x in w2.due(T0 + 10**6))
    assert a == b
    sixty = [x for x in a if x[0] == 60]
    assert sum(x[3] for x in sixty if x[2] == "voltage") == 30
    assert all(math.isfinite(x[4]) for x in a)
