"""The table of malformed payloads: (name, payload builder(device_id, now_ms) -> bytes, expected reason)."""

from __future__ import annotations

from collections.abc import Callable

import orjson


def good(device_id: str, now_ms: int, seq: int = 1, **changes) -> dict:
    r = {
        "v": 1,
        "device_id": device_id,
        "device_type": "climate",
        "seq": seq,
        "ts": now_ms,
        "metrics": {"temperature": 21.5, "humidity": 40.0, "co2": 550.0},
    }
    r.update(changes)
    return r


def _dumps(**changes) -> Callable[[str, int], bytes]:
    return lambda d, now: orjson.dumps(good(d, now, **changes))


def _metric(name: str, value: object) -> Callable[[str, int], bytes]:
    return lambda d, now: orjson.dumps(good(d, now, metrics={"temperature": 21.0, name: value}))


def _raw_metric(token: bytes) -> Callable[[str, int], bytes]:
    def build(d: str, now: int) -> bytes:
        return orjson.dumps(good(d, now, metrics={"temperature": 99999.125})).replace(b"99999.125", token)

    return build


def _without(field: str) -> Callable[[str, int], bytes]:
    def build(d: str, now: int) -> bytes:
        r = good(d, now)
        del r[field]
        return orjson.dumps(r)

    return build


CASES: list[tuple[str, Callable[[str, int], bytes], str]] = [
    ("truncated_json", lambda d, now: orjson.dumps(good(d, now))[:40], "malformed_json"),
    ("empty_payload", lambda d, now: b"", "malformed_json"),
    ("wrong_type_metric", _metric("humidity", "wet"), "wrong_type"),
    ("wrong_type_seq", _dumps(seq="seventeen"), "wrong_type"),
    ("nan", _raw_metric(b"NaN"), "not_finite"),
    ("infinity", _raw_metric(b"Infinity"), "not_finite"),
    ("negative_infinity", _raw_metric(b"-Infinity"), "not_finite"),
    (
        "oversized",
        lambda d, now: orjson.dumps(good(d, now, metrics={f"m{i:05d}": 1.0 for i in range(9000)})),
        "too_large",
    ),
    ("unknown_schema_version", _dumps(v=2), "unsupported_version"),
    ("missing_schema_version", _without("v"), "missing_field"),
    ("invalid_utf8", lambda d, now: orjson.dumps(good(d, now))[:-1] + b"\xc3\x28}", "invalid_utf8"),
    ("missing_device_id", _without("device_id"), "missing_field"),
    ("missing_metrics", _without("metrics"), "missing_field"),
    ("timestamp_far_future", lambda d, now: orjson.dumps(good(d, now + 86_400_000)), "timestamp_skew"),
    # older than the live skew is backfill up to IOTP_GATEWAY_MAX_BACKFILL_S (7 days by default); beyond: too_old
    ("timestamp_far_past", lambda d, now: orjson.dumps(good(d, now - 30 * 86_400_000)), "too_old"),
    ("unknown_metric", _metric("flux", 1.0), "unknown_metric"),
    ("bad_device_id", lambda d, now: orjson.dumps(good("bad id!", now)), "bad_device_id"),
    ("unknown_device_type", _dumps(device_type="toaster"), "unknown_device_type"),
    ("empty_array", lambda d, now: b"[]", "empty_batch"),
    ("not_an_object", lambda d, now: b"42", "not_an_object"),
    ("unknown_field", _dumps(firmware="1.2"), "unknown_field"),
    ("value_out_of_range", _metric("humidity", 140.0), "out_of_range"),
    ("topic_mismatch", lambda d, now: orjson.dumps(good("someone-else", now)), "topic_mismatch"),
    (
        "batch_with_one_bad_reading",
        lambda d, now: orjson.dumps([good(d, now, seq=1), good(d, now, seq=2, metrics={"temperature": "x"})]),
        "wrong_type",
    ),
]
