"""Unit tests of the pure detectors and of the engine's dedup (no Kafka, no Redis)."""

from __future__ import annotations

import random

import orjson

from iotp.schema import Alert
from stream_jobs.detectors import DeviceDetector, MetricStats, alert_id, load_rules
from stream_jobs.engine import Effects, Engine

T0 = 1_700_000_000_000
RULES = load_rules()


def feed(
    det: DeviceDetector, values: list[float], metric: str = "humidity", start: int = 0, step_ms: int = 1000
) -> list[dict]:
    out = []
    for i, v in enumerate(values):
        ts = T0 + (start + i) * step_ms
        out += det.observe(ts, ts, {metric: v})
    return out


def noise(n: int, mean: float = 45.0, sd: float = 0.5, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [round(mean + rng.gauss(0, sd), 3) for _ in range(n)]


def test_quiet_signal_raises_nothing() -> None:
    det = DeviceDetector("c1", "climate", RULES)
    assert feed(det, noise(2000)) == []


def test_spike_opens_once_and_resolves_once() -> None:
    det = DeviceDetector("c1", "climate", RULES)
    base = noise(300)
    events = feed(det, [*base[:100], 60.0, 61.0, 60.5, *base[103:]])
    assert [(e["rule"], e["state"]) for e in events] == [("zscore", "open"), ("zscore", "resolved")]
    opened, resolved = events
    assert opened["alert_id"] == resolved["alert_id"] == alert_id("c1", "zscore", "humidity", T0 + 100_000)
    assert resolved["resolved_at"] >= opened["first_seen"] + 2000
    for e in events:
        Alert.model_validate(e)


def test_threshold_with_hysteresis() -> None:
    det = DeviceDetector("c1", "climate", RULES)
    values = [69.0] * 5 + [70.5, 70.2, 69.5, 70.1, 69.9, 60.0, 60.0, 60.0, 60.0]
    events = [e for e in feed(det, values) if e["rule"] == "threshold"]
    # 69.5 / 69.9 are inside the range but not inside the hysteresis band: no flapping
    assert [e["state"] for e in events] == ["open", "resolved"]
    assert events[0]["expected_max"] == 70.0


def test_flatline_and_silence_and_back_online() -> None:
    det = DeviceDetector("c1", "climate", RULES)
    values = noise(60) + [44.0] * 10 + noise(10, seed=2)
    events = [e for e in feed(det, values) if e["rule"] == "flatline"]
    assert [e["state"] for e in events] == ["open", "resolved"]
    assert events[0]["first_seen"] == T0 + 60_000
    last = T0 + 79_000
    assert det.check_silence(last + 4000) == []  # 5 x 1 s interval not yet over
    [silent] = det.check_silence(last + 5001)
    assert (silent["rule"], silent["state"], silent["metric"]) == ("silence", "open", None)
    assert det.check_silence(last + 9000) == []  # no storm
    back = det.observe(last + 20_000, last + 20_000, {"humidity": 45.0})
    assert [(e["rule"], e["state"], e["alert_id"]) for e in back] == [("silence", "resolved", silent["alert_id"])]


def test_drift_detected() -> None:
    det = DeviceDetector("c1", "climate", RULES)
    base = noise(600)
    drifted = base[:300] + [v + 0.05 * i for i, v in enumerate(base[300:])]  # 0.1 sigma per second
    events = [e for e in feed(det, drifted) if e["rule"] == "drift"]
    assert events and events[0]["state"] == "open"
    assert events[0]["first_seen"] - (T0 + 300_000) < 90_000


def test_detector_state_round_trip() -> None:
    det = DeviceDetector("c1", "climate", RULES)
    values = noise(200)
    feed(det, [*values[:100], 60.0])
    det2 = DeviceDetector.from_state("c1", "climate", RULES, orjson.loads(orjson.dumps(det.to_state())))
    assert feed(det, values[101:], start=101) == feed(det2, values[101:], start=101)


def test_detector_state_reads_the_positional_stats_of_older_snapshots() -> None:
    """Snapshots in Redis written before MetricStats hold each metric's stats as a positional list."""
    det = DeviceDetector("c1", "climate", RULES)
    values = noise(200)
    feed(det, [*values[:100], 60.0])
    state = orjson.loads(orjson.dumps(det.to_state()))
    assert set(state["s"]["humidity"]) == set(MetricStats.FIELDS)
    old = {**state, "s": {m: [st[f] for f in MetricStats.FIELDS] for m, st in state["s"].items()}}
    det2 = DeviceDetector.from_state("c1", "climate", RULES, old)
    assert det2.to_state() == state
    assert feed(det, values[101:], start=101) == feed(det2, values[101:], start=101)


def _record(device: str, seqs: list[int], value: float = 45.0) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "device_id": device,
            "device_type": "climate",
            "readings": [
                {
                    "id": f"{device}:{s}",
                    "seq": s,
                    "ts": T0 + s * 1000,
                    "rx": T0 + s * 1000,
                    "metrics": {"humidity": value},
                }
                for s in seqs
            ],
        }
    )


def test_engine_dedup_out_of_order_and_replay_skip() -> None:
    engine = Engine([10], 5, RULES)
    fx = Effects()
    engine.apply(0, 0, _record("c1", [1, 2, 3, 5]), T0, fx)
    engine.apply(0, 1, _record("c1", [3, 5]), T0, fx)  # duplicates
    engine.apply(0, 2, _record("c1", [4]), T0, fx)  # out of order, new
    assert engine.apply(0, 1, _record("c1", [9]), T0, fx) is False  # offset already applied
    c = engine.counters
    assert (c["stream.readings"], c["stream.duplicates"], c["stream.out_of_order"]) == (5, 2, 1)
    state = engine.device(0, "c1")
    assert state.newest == (T0 + 5000, 5)
    # snapshot and restore: same state, same next offset
    snap = {b"__offset__": b"3", b"c1": orjson.dumps(state.to_state())}
    engine2 = Engine([10], 5, RULES)
    engine2.load_partition(0, snap)
    assert engine2.apply(0, 2, _record("c1", [4]), T0, Effects()) is False
    fx2 = Effects()
    engine2.apply(0, 3, _record("c1", [6]), T0, fx2)
    engine2.tick(T0 + 60_000, {0}, fx2)
    [agg] = [a for a in fx2.aggregates if a["start"] == T0]
    assert agg["count"] == 6  # readings 1..6 once each, though 3 and 5 came twice
