"""Unit tests of signals, scenarios, anomaly injection and its ground truth (pure logic)."""

from __future__ import annotations

import orjson
import pytest

from gateway.validation import Limits, Reason, Rejected, validate_payload
from iotp.profiles import shipped_profiles
from simulator.anomalies import KINDS, TRUTH_KEYS, AnomalyInjector, ScheduledAnomaly, load_truth
from simulator.fleet import build_fleet
from simulator.scenario import Scenario, load_scenario
from simulator.stream import generate_readings

START = 1_763_800_000_000


def test_standard_scenario_loads():
    sc = load_scenario("standard")
    assert sc.fleet.devices == 30 and sc.total_rate == 30
    assert {item.kind for item in sc.anomalies.schedule} == set(KINDS)


def test_scenario_overrides_and_interval():
    sc = Scenario().with_overrides(devices=10, interval_s=2.0, anomaly_rate=3.0)
    assert sc.total_rate == 5.0 and sc.device_interval_s == 2.0
    assert sc.anomalies.rate_per_device_hour == 3.0
    with pytest.raises(ValueError):
        Scenario.model_validate({"anomalies": {"schedule": [{"device": 0, "kind": "meteor", "at_s": 1}]}})


def test_generation_is_deterministic():
    a = generate_readings("standard", START, 600, seed=3)
    b = generate_readings("standard", START, 600, seed=3)
    assert list(a) == list(b)
    assert a.truth == b.truth and a.truth
    c = generate_readings("standard", START, 600, seed=4)
    assert list(c) != list(generate_readings("standard", START, 600, seed=3))


def test_signals_are_valid_and_rate_is_exact():
    stream = generate_readings(Scenario().with_overrides(devices=12, rate_per_s=6.0), START, 120, seed=1)
    readings = list(stream)
    assert len(readings) == 6 * 120
    for r in readings:
        validate_payload(orjson.dumps(r), r["ts"], Limits(), r["device_id"])
    seqs: dict[str, list[int]] = {}
    for r in readings:
        seqs.setdefault(r["device_id"], []).append(r["seq"])
    assert all(s == list(range(s[0], s[0] + len(s))) for s in seqs.values())


def test_truth_schema_and_file(tmp_path):
    path = tmp_path / "truth.jsonl"
    stream = generate_readings("standard", START, 3600, seed=11, anomaly_rate=4.0, truth_file=path)
    for _ in stream:
        pass
    truth = stream.truth
    assert load_truth(path) == truth
    assert {t["kind"] for t in truth} == set(KINDS)
    for t in truth:
        assert tuple(t) == TRUTH_KEYS
        assert (t["metric"] is None) == (t["kind"] == "dropout")
        assert START <= t["start_ms"] <= t["end_ms"] < START + 3600 * 1000


def _run(kind, metric="temperature", duration_s=60.0, params=None):
    fleet = build_fleet(1, seed=5, mix={"climate": 1}, seq0=0)
    device = fleet[0]
    sched = [
        ScheduledAnomaly(device.device_id, kind, at_s=100, duration_s=duration_s, metric=metric, params=params or {})
    ]
    clean = generate_readings(build_fleet(1, seed=5, mix={"climate": 1}, seq0=0), START, 300, seed=5)
    inj = generate_readings(fleet, START, 300, seed=5)
    inj.injector.__init__(seed=5, schedule=sched, start_ms=START)
    base = {r["ts"]: r for r in clean}
    return base, list(inj), inj.truth


@pytest.mark.parametrize("kind", ["spike", "drift", "flatline", "noise"])
def test_kinds_change_only_their_window_and_stay_valid(kind):
    base, readings, truth = _run(kind, duration_s=0 if kind == "spike" else 60)
    (t,) = truth
    assert t["kind"] == kind and t["metric"] == "temperature"
    changed = [r["ts"] for r in readings if r["metrics"] != base[r["ts"]]["metrics"]]
    assert changed, "the anomaly changed nothing"
    assert all(t["start_ms"] <= ts <= t["end_ms"] for ts in changed)
    for r in readings:
        validate_payload(orjson.dumps(r), r["ts"], Limits(), r["device_id"])
    if kind == "flatline":
        values = {r["metrics"]["temperature"] for r in readings if t["start_ms"] <= r["ts"] <= t["end_ms"]}
        assert values == {t["params"]["value"]}
    if kind == "spike":
        assert len(changed) == 1


def test_dropout_silences_device():
    base, readings, truth = _run("dropout", metric=None, duration_s=30)
    (t,) = truth
    assert t["metric"] is None
    ts = {r["ts"] for r in readings}
    missing = set(base) - ts
    assert len(missing) == 31 and all(t["start_ms"] <= m <= t["end_ms"] for m in missing)


def test_out_of_range_is_rejected_by_gateway():
    _, readings, truth = _run("out_of_range", duration_s=0)
    (t,) = truth
    spec = shipped_profiles()["climate"].metrics["temperature"]
    assert t["params"]["value"] > spec.valid_max
    bad = [r for r in readings if r["ts"] == t["start_ms"]]
    with pytest.raises(Rejected) as info:
        validate_payload(orjson.dumps(bad[0]), bad[0]["ts"], Limits())
    assert info.value.reason == Reason.OUT_OF_RANGE


def test_random_rate_roughly_poisson():
    inj = AnomalyInjector(seed=1, rate_per_device_hour=6.0, kinds={"spike": 1})
    for d in range(50):
        for k in range(3600):
            inj.apply(
                f"d{d}",
                "power",
                START + k * 1000,
                {"voltage": 230.0, "current": 10.0, "power_kw": 2.0, "power_factor": 0.9, "frequency": 50.0},
            )
    inj.close(START + 3600 * 1000)
    assert 200 <= len(inj.truth) <= 400  # expected 300 = 50 devices x 6/h x 1 h


def test_split_independent():
    """A device's anomalies do not depend on which other devices share the injector (worker split)."""
    metrics = {"temperature": 21.0, "humidity": 40.0, "co2": 500.0}
    alone = AnomalyInjector(seed=2, rate_per_device_hour=20)
    shared = AnomalyInjector(seed=2, rate_per_device_hour=20)
    for k in range(3600):
        ts = START + k * 1000
        alone.apply("a", "climate", ts, dict(metrics))
        shared.apply("b", "climate", ts, dict(metrics))
        shared.apply("a", "climate", ts, dict(metrics))
    alone.close(START + 3600_000)
    shared.close(START + 3600_000)
    assert alone.truth
    assert alone.truth == [t for t in shared.truth if t["device_id"] == "a"]
