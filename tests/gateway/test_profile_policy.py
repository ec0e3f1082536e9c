"""The gateway's device-profile checks (pure): unknown types by policy, a user-defined type's ranges."""

from __future__ import annotations

import orjson
import pytest

from gateway.validation import Limits, Reason, Rejected, validate_payload
from iotp.profiles import parse_profiles, shipped_profiles

NOW = 1_763_800_000_000
SOIL = parse_profiles(
    """
device_types:
  soil:
    metrics:
      moisture: {unit: "%", valid_min: 0, valid_max: 100, normal_min: 10, normal_max: 60}
      soil_temp: {unit: "°C", valid_min: -30, valid_max: 60, normal_min: 0, normal_max: 35}
"""
)


def reading(device_type: str, **metrics: float) -> bytes:
    return orjson.dumps(
        {"v": 1, "device_id": "d-1", "device_type": device_type, "seq": 1, "ts": NOW, "metrics": metrics}
    )


def check(raw: bytes, profiles=None, unknown_type="reject"):
    return validate_payload(raw, NOW, Limits(), "d-1", profiles, unknown_type)


def test_unknown_type_rejected_by_default():
    with pytest.raises(Rejected) as info:
        check(reading("soil", moisture=30.0))
    assert info.value.reason == Reason.UNKNOWN_DEVICE_TYPE
    assert "'soil' has no device profile" in info.value.detail
    assert info.value.device_id == "d-1"


def test_unknown_type_accepted_with_inferred_metrics_when_the_policy_says_so():
    [r] = check(reading("soil", moisture=30.0, anything_else=1e9), unknown_type="accept")
    assert r.device_type == "soil" and r.metrics == {"moisture": 30.0, "anything_else": 1e9}  # no range check


def test_accept_policy_still_checks_metric_names_and_known_types():
    with pytest.raises(Rejected) as info:
        check(orjson.dumps({**orjson.loads(reading("soil", x=1.0)), "metrics": {"Bad-Name": 1.0}}), None, "accept")
    assert info.value.reason == Reason.UNKNOWN_METRIC
    with pytest.raises(Rejected) as info:
        check(reading("climate", temperature=500.0), unknown_type="accept")
    assert info.value.reason == Reason.OUT_OF_RANGE


def test_user_defined_type_checked_against_its_profile():
    profiles = {**shipped_profiles(), **SOIL}
    [r] = check(reading("soil", moisture=30.0, soil_temp=12.5), profiles)
    assert r.metrics["moisture"] == 30.0
    with pytest.raises(Rejected) as info:
        check(reading("soil", moisture=130.0), profiles)
    assert (info.value.reason, info.value.detail) == (Reason.OUT_OF_RANGE, "moisture=130.0 outside [0.0, 100.0]")
    with pytest.raises(Rejected) as info:
        check(reading("soil", temperature=20.0), profiles)
    assert info.value.reason == Reason.UNKNOWN_METRIC
