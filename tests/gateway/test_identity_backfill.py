"""Gateway rules of issue 11: seq is optional, readings older than the live skew are backfill up to a bound,
beyond it they are dead-lettered with reason ``too_old``; the future stays limited to the skew. Pure logic."""

from __future__ import annotations

import orjson
import pytest

from gateway.validation import Limits, Reason, Rejected, is_backfill, validate_payload
from iotp.schema import NO_SEQ, Reading, reading_id, reading_key
from tests.gateway.cases import good

NOW = 1_763_800_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
LIMITS = Limits(max_skew_ms=300_000, max_backfill_ms=7 * DAY)


def test_seq_is_optional_and_the_key_is_a_metrics_hash() -> None:
    payload = good("dev-1", NOW)
    del payload["seq"]
    [r] = validate_payload(orjson.dumps(payload), NOW, LIMITS, "dev-1")
    assert r.seq is None and r.key >= NO_SEQ
    assert r.reading_id == f"dev-1:{NOW}:{r.key}"
    same = Reading.model_validate({**payload, "metrics": dict(reversed(payload["metrics"].items()))})
    assert same.key == r.key  # metric order does not matter
    other = Reading.model_validate({**payload, "metrics": {**payload["metrics"], "co2": 551.0}})
    assert other.key != r.key  # another reading in the same millisecond


def test_identity_includes_time_so_a_reboot_is_a_new_reading() -> None:
    before = Reading.model_validate(good("dev-1", NOW, seq=1))
    after = Reading.model_validate(good("dev-1", NOW + 60_000, seq=1))
    assert before.reading_id != after.reading_id
    assert reading_id("dev-1", NOW, reading_key(1, {})) == before.reading_id


@pytest.mark.parametrize(
    ("age_ms", "backfill"), [(0, False), (299_000, False), (301_000, True), (HOUR, True), (7 * DAY - 1, True)]
)
def test_backfill_inside_the_bound(age_ms: int, backfill: bool) -> None:
    [r] = validate_payload(orjson.dumps(good("dev-1", NOW - age_ms)), NOW, LIMITS, "dev-1")
    assert is_backfill(r.ts, NOW, LIMITS) is backfill


def test_older_than_the_bound_is_too_old_with_a_clear_detail() -> None:
    with pytest.raises(Rejected) as info:
        validate_payload(orjson.dumps(good("dev-1", NOW - 8 * DAY)), NOW, LIMITS, "dev-1")
    assert info.value.reason == Reason.TOO_OLD
    assert "8.0 days old" in info.value.detail and "IOTP_GATEWAY_MAX_BACKFILL_S" in info.value.detail


def test_the_future_stays_limited_to_the_skew() -> None:
    with pytest.raises(Rejected) as info:
        validate_payload(orjson.dumps(good("dev-1", NOW + 301_000)), NOW, LIMITS, "dev-1")
    assert info.value.reason == Reason.TIMESTAMP_SKEW
    validate_payload(orjson.dumps(good("dev-1", NOW + 299_000)), NOW, LIMITS, "dev-1")
