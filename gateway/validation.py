"""Validate one MQTT payload into normalized readings, or say exactly why it is rejected.

Pure logic (no I/O) so every reject reason is unit-testable. A payload is one reading object or a JSON
array of reading objects (batched publishing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from iotp.profiles import Profiles, UnknownTypePolicy, shipped_profiles
from iotp.schema import SUPPORTED_VERSIONS, Reading


class Reason(StrEnum):
    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    EMPTY_BATCH = "empty_batch"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    BAD_DEVICE_ID = "bad_device_id"
    UNKNOWN_DEVICE_TYPE = "unknown_device_type"
    UNKNOWN_METRIC = "unknown_metric"
    OUT_OF_RANGE = "out_of_range"
    TIMESTAMP_SKEW = "timestamp_skew"
    TOO_OLD = "too_old"
    TOPIC_MISMATCH = "topic_mismatch"


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str, device_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 65536
    max_skew_ms: int = 300_000  # live window: |ts - now| within it is a live reading
    max_batch: int = 1000
    max_backfill_ms: int = 7 * 86_400_000  # older than the live window but within this: a backfill reading


_NON_FINITE = re.compile(rb"(?<![\"\w])-?(NaN|Infinity)(?![\"\w])")


def _decode(raw: bytes | bytearray, limits: Limits) -> object:
    if len(raw) > limits.max_payload_bytes:
        raise Rejected(Reason.TOO_LARGE, f"{len(raw)} bytes > limit {limits.max_payload_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(Reason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _NON_FINITE.search(raw):
            raise Rejected(Reason.NOT_FINITE, "NaN/Infinity is not a number") from None
        raise Rejected(Reason.MALFORMED_JSON, str(exc)) from None


def _reason_for(error: ErrorDetails) -> Reason:
    kind = error["type"]
    loc = error["loc"]
    if kind == "missing":
        return Reason.MISSING_FIELD
    if kind == "extra_forbidden":
        return Reason.UNKNOWN_FIELD
    if loc and loc[0] == "device_id" and kind == "string_pattern_mismatch":
        return Reason.BAD_DEVICE_ID
    if loc and loc[0] == "device_type" and kind == "string_pattern_mismatch":
        return Reason.UNKNOWN_DEVICE_TYPE
    if kind == "value_error" and "finite" in error.get("msg", ""):
        return Reason.NOT_FINITE
    if kind in ("finite_number",):
        return Reason.NOT_FINITE
    if kind in ("greater_than_equal", "less_than", "greater_than", "less_than_equal"):
        return Reason.OUT_OF_RANGE
    if kind in ("too_short", "too_long") and loc and loc[0] == "metrics":
        return Reason.WRONG_TYPE if kind == "too_long" else Reason.MISSING_FIELD
    if loc and loc[0] == "metrics" and len(loc) >= 2 and kind == "string_pattern_mismatch":
        return Reason.UNKNOWN_METRIC
    return Reason.WRONG_TYPE


def _validate_one(
    obj: object,
    now_ms: int,
    limits: Limits,
    topic_device: str | None,
    profiles: Profiles,
    unknown_type: UnknownTypePolicy,
) -> Reading:
    if not isinstance(obj, dict):
        raise Rejected(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    device_id = obj.get("device_id") if isinstance(obj.get("device_id"), str) else None
    if "v" not in obj:
        raise Rejected(Reason.MISSING_FIELD, "v: schema version is required", device_id)
    if obj["v"] not in SUPPORTED_VERSIONS or isinstance(obj["v"], bool):
        raise Rejected(
            Reason.UNSUPPORTED_VERSION,
            f"schema version {obj['v']!r} is not supported (supported: {sorted(SUPPORTED_VERSIONS)})",
            device_id,
        )
    try:
        reading = Reading.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise Rejected(_reason_for(first), f"{where}: {first['msg']}", device_id) from None
    check_profile(reading, profiles, unknown_type, device_id)
    check_time(reading.ts, now_ms, limits, device_id)
    if topic_device is not None and topic_device != reading.device_id:
        raise Rejected(
            Reason.TOPIC_MISMATCH,
            f"payload device_id {reading.device_id!r} != topic device {topic_device!r}",
            device_id,
        )
    return reading


def check_time(ts: int, now_ms: int, limits: Limits, device_id: str | None = None) -> None:
    """A reading may lie in the future by at most the live skew (clock error), and in the past by at most
    the backfill bound (a device uploading what it buffered while offline); see :func:`is_backfill`."""
    if ts - now_ms > limits.max_skew_ms:
        raise Rejected(
            Reason.TIMESTAMP_SKEW,
            f"ts {ts} is {(ts - now_ms) / 1000:+.0f}s in the future of gateway time "
            f"(limit +{limits.max_skew_ms / 1000:.0f}s, IOTP_GATEWAY_MAX_SKEW_S)",
            device_id,
        )
    if now_ms - ts > limits.max_backfill_ms:
        raise Rejected(
            Reason.TOO_OLD,
            f"ts {ts} is {(now_ms - ts) / 86_400_000:.1f} days old, beyond the backfill bound of "
            f"{limits.max_backfill_ms / 86_400_000:g} days (IOTP_GATEWAY_MAX_BACKFILL_S)",
            device_id,
        )


def is_backfill(ts: int, now_ms: int, limits: Limits) -> bool:
    """Older than the live window: history only (raw table and rollups), not live windows or detectors."""
    return now_ms - ts > limits.max_skew_ms


def check_profile(
    reading: Reading, profiles: Profiles, unknown_type: UnknownTypePolicy, device_id: str | None = None
) -> None:
    """The device profile's checks: known type (or ``unknown_type="accept"``: metric names were already
    checked by the schema, values are not range-checked), known metrics, values inside the valid range."""
    profile = profiles.get(reading.device_type)
    if profile is None:
        if unknown_type == "accept":
            return
        raise Rejected(
            Reason.UNKNOWN_DEVICE_TYPE,
            f"device_type {reading.device_type!r} has no device profile (known: {', '.join(sorted(profiles))})",
            device_id,
        )
    for name, value in reading.metrics.items():
        spec = profile.metrics.get(name)
        if spec is None:
            raise Rejected(Reason.UNKNOWN_METRIC, f"{reading.device_type} has no metric {name!r}", device_id)
        if not spec.valid_min <= value <= spec.valid_max:
            raise Rejected(
                Reason.OUT_OF_RANGE, f"{name}={value} outside [{spec.valid_min}, {spec.valid_max}]", device_id
            )


def validate_payload(
    raw: bytes | bytearray,
    now_ms: int,
    limits: Limits = Limits(),
    topic_device: str | None = None,
    profiles: Profiles | None = None,
    unknown_type: UnknownTypePolicy = "reject",
) -> list[Reading]:
    """All readings of the payload, or :class:`Rejected` for the first problem found.

    ``profiles``: the device profiles to check against (default: the shipped ones); ``unknown_type``: what
    to do with a device type that has none. A batch is accepted or rejected as a whole, so a reject keeps
    the original bytes intact.
    """
    if profiles is None:
        profiles = shipped_profiles()
    obj = _decode(raw, limits)
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise Rejected(Reason.EMPTY_BATCH, "empty array")
    if len(items) > limits.max_batch:
        raise Rejected(Reason.TOO_LARGE, f"{len(items)} readings > batch limit {limits.max_batch}")
    return [_validate_one(item, now_ms, limits, topic_device, profiles, unknown_type) for item in items]


def topic_device_id(topic: str) -> str | None:
    """The device id at the end of ``<prefix>/<type>/<device_id>``; None if the topic has no such part."""
    parts = topic.rsplit("/", 2)
    return parts[-1] if len(parts) == 3 and parts[-1] else None
