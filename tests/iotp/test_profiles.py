"""Device profiles: YAML validation with clear errors (pure), and the live store in a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from iotp.profile_store import ProfileStore, ProfileWatcher, decode_entries
from iotp.profiles import ProfileError, file_profiles, parse_profile, parse_profiles, shipped_profiles
from iotp.topics import redis_names

MINIMAL = """
device_types:
  soil:
    expected_interval_s: 60
    metrics:
      moisture: {unit: "%", valid_min: 0, valid_max: 100, normal_min: 10, normal_max: 60}
"""


def test_shipped_profiles_describe_the_three_simulated_types():
    profiles = shipped_profiles()
    assert sorted(profiles) == ["climate", "power", "vibration"]
    temp = profiles["climate"].metrics["temperature"]
    assert (temp.unit, temp.valid_min, temp.valid_max, temp.normal_min, temp.normal_max) == ("°C", -40, 85, 15, 30)
    assert profiles["vibration"].metrics["rpm"].threshold.min == 500
    assert all(p.expected_interval_s for p in profiles.values())


def test_minimal_profile_gets_defaults():
    soil = parse_profiles(MINIMAL)["soil"]
    assert soil.simulation == "generic"
    assert soil.metrics["moisture"].threshold.max_rate is None
    assert soil.metrics["moisture"].threshold.zscore is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("device_types: [1, 2]", "device_types: Input should be a valid dictionary"),
        ("- a list", "expected a mapping"),
        ("device_types: {soil: {metrics: {}}}", "device_types.soil.metrics: Dictionary should have at least 1 item"),
        (
            MINIMAL.replace("normal_max: 60", "normal_max: 160"),
            "device_types.soil.metrics.moisture: normal range [10.0, 160.0] must lie inside the valid range "
            "[0.0, 100.0]",
        ),
        (MINIMAL.replace("valid_min: 0", "valid_min: 100"), "valid_min 100.0 must be below valid_max 100.0"),
        (MINIMAL.replace("unit:", "units:"), "soil.metrics.moisture.units: Extra inputs are not permitted"),
        (MINIMAL.replace("moisture:", "Moisture:"), "String should match pattern"),
        (MINIMAL.replace("soil:", "Soil Sensor:"), "String should match pattern"),
        (MINIMAL.replace("expected_interval_s: 60", "expected_interval_s: 0"), "greater than 0"),
        (MINIMAL.replace("normal_min: 10", "normal_min: .nan"), "finite number"),
        (MINIMAL.replace("normal_max: 60}", "normal_max: 60, threshold: {min: 50, max: 20}}"), "above threshold max"),
        ("device_types: {soil: {simulation: plasma, metrics: {m: {valid_min: 0}}}}", "device_types.soil.simulation"),
        ("device_types: {a: [", "not valid YAML"),
    ],
)
def test_invalid_profiles_fail_with_where_and_why(text, message):
    with pytest.raises(ProfileError) as info:
        parse_profiles(text, "my.yaml")
    assert str(info.value).startswith("my.yaml: ")
    assert message in str(info.value)


def test_override_file_adds_and_replaces_types(tmp_path):
    path = tmp_path / "profiles.yaml"
    lux = "{valid_min: 0, valid_max: 100000, normal_min: 0, normal_max: 10000}"
    path.write_text(MINIMAL + f"  climate:\n    metrics:\n      lux: {lux}\n")
    profiles = file_profiles(path)
    assert sorted(profiles) == ["climate", "power", "soil", "vibration"]
    assert list(profiles["climate"].metrics) == ["lux"]
    assert sorted(shipped_profiles()["climate"].metrics) == ["co2", "humidity", "temperature"]  # not mutated


def test_missing_override_file_is_a_clear_error(tmp_path):
    with pytest.raises(ProfileError, match=r"cannot read profiles file .*nope\.yaml"):
        file_profiles(tmp_path / "nope.yaml")


def test_malformed_stored_entry_is_skipped_and_reported():
    good = b'{"profile": {"metrics": {"m": {"valid_min": 0, "valid_max": 1, "normal_min": 0, "normal_max": 1}}}}'
    snap = decode_entries(3, {b"ok": good, b"bad": b"{not json", b"worse": b'{"profile": {"metrics": {}}}'})
    assert list(snap.entries) == ["ok"]
    assert sorted(p.split(":")[0] for p in snap.problems) == ["bad", "worse"]


# --- the live store, in the session's real Redis ------------------------------------------------------------


@pytest.mark.integration
async def test_store_seeds_absent_types_refreshes_file_ones_and_keeps_api_ones(isolated_settings):
    r = aioredis.from_url(isolated_settings.redis_url)
    names = redis_names(isolated_settings)
    store = ProfileStore(r, names)
    soil = parse_profiles(MINIMAL)["soil"]
    try:
        assert await store.seed(shipped_profiles()) == 3
        assert await store.seed(shipped_profiles()) == 0, "an unchanged file changes nothing"
        v1 = await store.version()
        # the file changed: a file-sourced type is refreshed ...
        edited = dict(shipped_profiles())
        edited["climate"] = soil
        assert await store.seed(edited) == 1
        assert (await store.snapshot()).entries["climate"].profile == soil
        # ... but a type written through the API is never overwritten by a file
        assert await store.put("climate", shipped_profiles()["climate"]) is False
        assert await store.seed(edited) == 0
        snap = await store.snapshot()
        assert snap.entries["climate"].source == "api"
        assert snap.entries["climate"].profile == shipped_profiles()["climate"]
        assert snap.version > v1
        assert await store.put("soil", soil) is True
    finally:
        await r.aclose()


@pytest.mark.integration
async def test_watcher_sees_a_change_of_another_writer(isolated_settings):
    r = aioredis.from_url(isolated_settings.redis_url)
    names = redis_names(isolated_settings)
    seen: list[list[str]] = []
    watcher = ProfileWatcher(r, names, shipped_profiles(), poll_s=0.05, on_change=lambda p: seen.append(sorted(p)))
    task = asyncio.ensure_future(watcher.run())
    try:
        for _ in range(100):
            if watcher.version is not None:
                break
            await asyncio.sleep(0.05)
        assert sorted(watcher.profiles) == ["climate", "power", "vibration"]
        await ProfileStore(r, names).put("soil", parse_profile(parse_profiles(MINIMAL)["soil"].model_dump(), "soil"))
        for _ in range(200):
            if "soil" in watcher.profiles:
                break
            await asyncio.sleep(0.05)
        assert "soil" in watcher.profiles
        assert seen[-1] == ["climate", "power", "soil", "vibration"]
    finally:
        task.cancel()
        await r.aclose()
