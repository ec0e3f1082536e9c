"""The simulator builds its fleet from device profiles: a user-defined type from a YAML file is simulated,
its readings pass the gateway's checks against the same profiles, and anomalies are injected into it."""

from __future__ import annotations

import orjson
import pytest

from gateway.validation import Limits, validate_payload
from iotp.profiles import file_profiles, parse_profiles, shipped_profiles
from simulator.fleet import build_fleet
from simulator.scenario import Scenario
from simulator.stream import generate_readings

START = 1_763_800_000_000
TANK_YAML = """
device_types:
  tank:
    description: water tank
    expected_interval_s: 5
    metrics:
      level: {unit: "%", valid_min: 0, valid_max: 100, normal_min: 20, normal_max: 90}
      pressure: {unit: bar, valid_min: 0, valid_max: 16, normal_min: 2, normal_max: 6, signal: {noise: 0.05}}
  climate:
    simulation: climate
    metrics:
      temperature: {unit: "°C", valid_min: -40, valid_max: 85, normal_min: 15, normal_max: 30}
      lux: {unit: lx, valid_min: 0, valid_max: 100000, normal_min: 0, normal_max: 2000}
"""


@pytest.fixture
def profiles(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text(TANK_YAML)
    return file_profiles(path)  # what IOTP_PROFILES_FILE gives


def test_user_defined_type_is_simulated_within_its_ranges(profiles):
    fleet = build_fleet(6, seed=3, mix={"tank": 1.0}, seq0=0, profiles=profiles)
    assert {d.device_type for d in fleet} == {"tank"}
    readings = [d.reading_at(START + k * 5000) for k in range(720) for d in fleet]  # one hour
    assert all(set(r["metrics"]) == {"level", "pressure"} for r in readings)
    for r in readings:
        validate_payload(orjson.dumps(r), r["ts"], Limits(), r["device_id"], profiles)  # raises if invalid
    level = [r["metrics"]["level"] for r in readings]
    assert min(level) >= 20 and max(level) <= 90, "a quiet generic signal stays in the normal range"
    assert len(set(level)) > 100, "it moves"


def test_built_in_model_follows_the_profile_metrics(profiles):
    [device] = build_fleet(1, seed=1, mix={"climate": 1.0}, seq0=0, profiles=profiles)
    metrics = device.reading_at(START)["metrics"]
    assert set(metrics) == {"temperature", "lux"}  # humidity and co2 dropped, lux generated generically


def test_shipped_profiles_keep_the_built_in_signals():
    a = build_fleet(5, seed=9, seq0=0)
    b = build_fleet(5, seed=9, seq0=0, profiles=shipped_profiles())
    for x, y in zip(a, b, strict=True):
        assert x.reading_at(START) == y.reading_at(START)
    assert set(a[0].reading_at(START)["metrics"]) == set(shipped_profiles()[a[0].device_type].metrics)


def test_anomalies_are_injected_into_the_user_defined_type(profiles):
    scenario = Scenario().with_overrides(devices=4, mix={"tank": 1.0}, rate_per_s=4.0, anomaly_rate=30.0, seed=5)
    stream = generate_readings(scenario, START, 3600, profiles=profiles)
    readings = list(stream)
    assert readings and {r["device_type"] for r in readings} == {"tank"}
    assert stream.truth, "anomalies were injected"
    assert {t["metric"] for t in stream.truth} <= {"level", "pressure", None}


def test_a_type_without_profile_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device types without a profile: \['tank'\]; known: climate, power"):
        build_fleet(2, mix={"tank": 1.0})
    assert "tank" in parse_profiles(TANK_YAML)
