"""Deliberately broken payloads (``--malformed-fraction``), each with the gateway reject reason it must get.

``corrupt(reading, kind)`` turns a good reading dict into the bytes of one broken payload; ``CORRUPTIONS``
maps each kind to the :class:`gateway.validation.Reason` value the gateway is expected to give it.
"""

from __future__ import annotations

import random

import orjson

CORRUPTIONS: dict[str, str] = {
    "truncated": "malformed_json",
    "wrong_type": "wrong_type",
    "nan": "not_finite",
    "infinity": "not_finite",
    "bad_version": "unsupported_version",
    "invalid_utf8": "invalid_utf8",
    "missing_device_id": "missing_field",
    "future_ts": "timestamp_skew",
    "unknown_metric": "unknown_metric",
    "bad_device_id": "bad_device_id",
    "empty_array": "empty_batch",
    "unknown_field": "unknown_field",
    "oversized": "too_large",
}


def corrupt(reading: dict, kind: str, max_payload_bytes: int = 65536) -> bytes:
    r = {**reading, "metrics": dict(reading["metrics"])}
    metric = next(iter(r["metrics"]))
    if kind == "truncated":
        raw = orjson.dumps(r)
        return raw[: len(raw) // 2]
    if kind == "wrong_type":
        r["metrics"][metric] = "hot"
    elif kind in ("nan", "infinity"):
        return _non_finite(r, metric, b"NaN" if kind == "nan" else b"-Infinity")
    elif kind == "bad_version":
        r["v"] = 99
    elif kind == "invalid_utf8":
        return orjson.dumps(r)[:-1] + b"\xff\xfe}"
    elif kind == "missing_device_id":
        del r["device_id"]
    elif kind == "future_ts":
        r["ts"] += 24 * 3600 * 1000
    elif kind == "unknown_metric":
        r["metrics"]["flux_capacitance"] = 1.21
    elif kind == "bad_device_id":
        r["device_id"] = "bad id/with spaces"
    elif kind == "empty_array":
        return b"[]"
    elif kind == "unknown_field":
        r["extra"] = True
    elif kind == "oversized":
        r["metrics"] = {f"m{i:05d}": 1.0 for i in range(max_payload_bytes // 8)}
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return orjson.dumps(r)


def _non_finite(r: dict, metric: str, token: bytes) -> bytes:
    marker = 123456.789012
    r["metrics"][metric] = marker
    return orjson.dumps(r).replace(orjson.dumps(marker), token, 1)


def random_corruption(reading: dict, rng: random.Random, max_payload_bytes: int = 65536) -> bytes:
    return corrupt(reading, rng.choice(sorted(CORRUPTIONS)), max_payload_bytes)
