"""The detectors take thresholds and expected intervals from the device profiles, and a running worker
applies a changed profile without a restart."""

from __future__ import annotations

import uuid

import pytest

from iotp.profile_store import ProfileStore
from iotp.profiles import parse_profiles, shipped_profiles
from iotp.topics import redis_names
from stream_jobs.detectors import DeviceDetector, load_rules
from tests.stream_jobs.conftest import stream_test_settings
from tests.stream_jobs.support import Producer, TopicWatcher, now_ms, readings, redis_client
from tests.support.waiting import until

T0 = 1_700_000_000_000


def with_humidity_max(normal_max: float):
    """The shipped profiles, climate humidity's normal maximum changed."""
    climate = shipped_profiles()["climate"]
    metrics = dict(climate.metrics)
    metrics["humidity"] = metrics["humidity"].model_copy(update={"normal_max": normal_max})
    return {**shipped_profiles(), "climate": climate.model_copy(update={"metrics": metrics})}


def feed(det: DeviceDetector, values: list[float], start: int) -> list[dict]:
    out = []
    for i, v in enumerate(values):
        ts = T0 + (start + i) * 1000
        out += det.observe(ts, ts, {"humidity": v})
    return out


def test_thresholds_come_from_the_profile():
    rules = load_rules(profiles=with_humidity_max(50.0))
    rule = rules.rule("climate", "humidity")
    assert (rule.min, rule.max) == (20.0, 50.0)
    temp = rules.rule("climate", "temperature")
    assert (temp.min, temp.max, temp.max_rate) == (15.0, 30.0, 2.0)  # the profile's threshold override


def test_a_changed_profile_applies_to_running_detectors():
    rules = load_rules()
    det = DeviceDetector("c1", "climate", rules)
    assert [e for e in feed(det, [65.0] * 5, 0) if e["rule"] == "threshold"] == []  # normal up to 70
    rules.use_profiles(with_humidity_max(60.0))
    [opened] = [e for e in feed(det, [65.0] * 5, 5) if e["rule"] == "threshold"]
    assert (opened["state"], opened["expected_max"], opened["first_seen"]) == ("open", 60.0, T0 + 5000)


def test_user_defined_type_gets_threshold_rules_and_expected_interval():
    tank = parse_profiles(
        """
device_types:
  tank:
    expected_interval_s: 20
    metrics:
      level: {unit: "%", valid_min: 0, valid_max: 100, normal_min: 5, normal_max: 95, threshold: {severity: critical}}
"""
    )
    rules = load_rules(profiles={**shipped_profiles(), **tank})
    det = DeviceDetector("t1", "tank", rules)
    events = []
    for i in range(10):
        events += det.observe(T0 + i * 1000, T0 + i * 1000, {"level": 97.0 if i == 9 else 50.0 + i % 2})
    [opened] = events
    assert (opened["rule"], opened["severity"], opened["expected_max"]) == ("threshold", "critical", 95.0)
    # observed every 1 s, but the profile expects 20 s: silent after 5 x 20 s, not 5 x 1 s
    last = T0 + 9000
    assert det.check_silence(last + 99_000) == []
    [silent] = det.check_silence(last + 100_001)
    assert silent["rule"] == "silence"
    # unknown type: statistical rules only, silence from the observed interval
    other = DeviceDetector("x1", "unprofiled", rules)
    for i in range(10):
        assert other.observe(T0 + i * 1000, T0 + i * 1000, {"level": 1e6 + i % 2}) == []
    assert other.check_silence(T0 + 9000 + 5001) != []


# --- a running worker ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_settings(stack_settings):
    """This module's own worker, polling the profiles every 0.5 s."""
    return stream_test_settings(stack_settings, profiles_poll_s=0.5)


@pytest.mark.integration
async def test_running_worker_uses_a_threshold_changed_in_the_store(stream_settings, stream_worker):
    settings = stream_settings
    device = f"prof-{uuid.uuid4().hex[:6]}"
    r = redis_client(settings)
    store = ProfileStore(r, redis_names(settings))
    await store.put("climate", with_humidity_max(60.0)["climate"])  # what PUT /api/profiles/climate does
    seq = 0
    async with Producer(settings) as producer, TopicWatcher(settings) as watch:

        async def threshold_alert():
            nonlocal seq
            seq += 1
            await producer.send(device, readings([(seq, now_ms(), {"humidity": 65.0})]))  # normal in the file
            return watch.alerts(device, "threshold")

        [opened, *_] = await until(threshold_alert, timeout=90, message="threshold alert at the changed maximum")
    assert (opened["state"], opened["metric"], opened["expected_max"]) == ("open", "humidity", 60.0)
    await r.aclose()
