"""Unit tests of the gateway's pure validation logic."""

from __future__ import annotations

import orjson
import pytest

from gateway.validation import Limits, Reason, Rejected, topic_device_id, validate_payload
from iotp.schema import now_ms
from simulator.malformed import CORRUPTIONS, corrupt
from tests.gateway.cases import CASES, good

NOW = 1_763_800_000_000
LIMITS = Limits(max_payload_bytes=65536, max_skew_ms=300_000)


@pytest.mark.parametrize(("name", "build", "reason"), CASES, ids=[c[0] for c in CASES])
def test_malformed_payload_rejected_with_reason(name, build, reason):
    with pytest.raises(Rejected) as info:
        validate_payload(build("dev-1", NOW), NOW, LIMITS, "dev-1")
    assert info.value.reason == Reason(reason), info.value.detail


def test_case_table_covers_many_reasons():
    assert len(CASES) >= 15
    assert len({c[2] for c in CASES}) >= 14


def test_valid_single_and_batch():
    one = validate_payload(orjson.dumps(good("dev-1", NOW)), NOW, LIMITS, "dev-1")
    assert [r.reading_id for r in one] == [f"dev-1:{NOW}:1"]
    many = validate_payload(orjson.dumps([good("dev-1", NOW, seq=s) for s in (3, 4, 5)]), NOW, LIMITS, "dev-1")
    assert [r.seq for r in many] == [3, 4, 5]


def test_reject_keeps_device_id_when_known():
    with pytest.raises(Rejected) as info:
        validate_payload(orjson.dumps(good("dev-9", NOW + 10**9)), NOW, LIMITS, "dev-9")
    assert info.value.device_id == "dev-9"


def test_range_bounds_inclusive():
    edge = good("dev-1", NOW, metrics={"humidity": 100.0, "temperature": -40.0})
    assert validate_payload(orjson.dumps(edge), NOW, LIMITS)


def test_topic_device_id():
    assert topic_device_id("iotp/telemetry/climate/dev-1") == "dev-1"
    assert topic_device_id("dev-1") is None


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_simulator_corruptions_get_their_declared_reason(kind):
    now = now_ms()
    with pytest.raises(Rejected) as info:
        validate_payload(corrupt(good("dev-1", now), kind), now, LIMITS, "dev-1")
    assert info.value.reason == Reason(CORRUPTIONS[kind])
