"""The reading schema, on the wire (MQTT payload) and inside the pipeline (Kafka record).

MQTT payload, schema version 1 -- one reading, or a JSON array of readings of one device::

    {"v": 1, "device_id": "climate-0001", "device_type": "climate", "seq": 17,
     "ts": 1763800000123, "metrics": {"temperature": 21.4, "humidity": 41.0, "co2": 612.0}}

``ts`` is the sensor's clock in epoch milliseconds (UTC). ``seq`` is optional: a counter the device
increases per reading, which real devices reset when they reboot.

Reading identity (what every stage deduplicates on) is ``(device_id, ts, key)``, where ``key`` is the
``seq`` when the device sends one and otherwise ``NO_SEQ | hash63(metrics)`` (see :func:`reading_key`). A
redelivery repeats all three; a rebooted device repeats a ``seq`` but not its ``ts``, so its readings are
new. Two different readings of a seq-less device in the same millisecond differ in their metrics, hence
in the key, and are both kept; the same metrics at the same millisecond are one reading. Order (latest
state, in-order vs out-of-order) is ``(ts, key)``: time first, ``seq`` only breaks ties.

Kafka record on the readings topic: key = device id (so a device's readings stay ordered in one
partition), value = a :class:`ReadingBatch` -- the normalized readings of that device that the gateway
collected within its linger window. Carrying several readings per record is what keeps the per-record
cost of the stream jobs affordable (see docs/architecture.md).

Partition mode (``IOTP_KAFKA_RECORD_MODE=partition``, explicit and opt-in): one record carries the device
batches of *many* devices of one partition -- value = a :class:`PartitionBatch` ``{"v": 1, "batches":
[ReadingBatch, ...]}``, key = none, sent with an explicit partition: exactly the partition Kafka's default
partitioner would choose for each device id as key (:func:`iotp.kafka.partition_for`), so a device's
readings still live in one partition, in order. Consumers accept both forms (:func:`device_batches`).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated, Literal, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

SCHEMA_VERSION: Literal[1] = 1
SUPPORTED_VERSIONS = frozenset({1})

# The one definition of each name pattern (API parameters, profiles and MQTT auth use these).
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # no MQTT wildcard, '/' or ':' (reading ids)
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # device types, metric names, rule names

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
MetricName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class Reading(BaseModel):
    """One reading as a device publishes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    device_id: DeviceId
    device_type: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    seq: int | None = Field(None, ge=0, lt=2**63, description="optional per-device counter (resets on reboot)")
    ts: int = Field(ge=0, lt=2**47, description="sensor time, epoch milliseconds UTC")
    metrics: dict[MetricName, float] = Field(min_length=1, max_length=64)

    @field_validator("metrics")
    @classmethod
    def _finite(cls, metrics: dict[str, float]) -> dict[str, float]:
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise ValueError(f"metric {name!r} is not a finite number")
        return metrics

    @property
    def key(self) -> int:
        return reading_key(self.seq, self.metrics)

    @property
    def reading_id(self) -> str:
        return reading_id(self.device_id, self.ts, self.key)


def now_ms() -> int:
    """Wall clock in epoch milliseconds, the unit of every timestamp in the schema."""
    return int(time.time() * 1000)


NO_SEQ = 1 << 63  # keys at or above this stand for "no seq": NO_SEQ | 63-bit hash of the metrics


def reading_key(seq: int | None, metrics: dict[str, float]) -> int:
    """The reading's key within ``(device_id, ts)``: its ``seq``, or for a device that sends none a 63-bit
    hash of its metrics (sorted names, exact float values) above :data:`NO_SEQ`, so it never equals a seq.
    Fits ClickHouse's ``UInt64`` ``seq`` column, which stores exactly this key."""
    if seq is not None:
        return seq
    digest = hashlib.blake2b(orjson.dumps(metrics, option=orjson.OPT_SORT_KEYS), digest_size=8).digest()
    return NO_SEQ | (int.from_bytes(digest, "big") & (NO_SEQ - 1))


def reading_id(device_id: str, ts: int, key: int) -> str:
    """``device:ts:key`` -- the identity as one string (ClickHouse's ``reading_id`` alias is the same)."""
    return f"{device_id}:{ts}:{key}"


def key_of(r: dict) -> int:
    """The key of a normalized reading (dict): ``seq``, else ``k`` (set by the gateway when seq is absent)."""
    seq = r.get("seq")
    return seq if seq is not None else r["k"]


def order_of(r: dict) -> tuple[int, int]:
    """Order of normalized readings of one device: time first, the key (seq) breaks ties."""
    return (r["ts"], key_of(r))


class NormalizedReading(BaseModel):
    """A validated reading inside a :class:`ReadingBatch`."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="device:ts:key, see reading_id")
    seq: int | None = None
    k: int | None = Field(None, description="the key when seq is absent (NO_SEQ | metrics hash), else omitted")
    ts: int
    rx: int = Field(description="gateway receive time, epoch ms")
    metrics: dict[str, float]
    bf: bool = Field(
        False,
        description="backfill: older than the gateway's live skew when received (buffered upload); stored in "
        "history, kept out of live windows and detectors; omitted when false",
    )


class ReadingBatch(BaseModel):
    """The value of one Kafka record on the readings topic: readings of one device, in (ts, key) order."""

    v: Literal[1] = SCHEMA_VERSION
    device_id: str
    device_type: str
    readings: list[NormalizedReading]


def encode_batch(device_id: str, device_type: str, readings: list[dict]) -> bytes:
    """Fast path used by the gateway: readings are dicts already shaped like NormalizedReading."""
    return orjson.dumps({"v": SCHEMA_VERSION, "device_id": device_id, "device_type": device_type, "readings": readings})


class PartitionBatch(BaseModel):
    """The value of a partition-mode record: device batches of devices that all map to the record's
    partition (each device at most once per record, its readings in (ts, key) order)."""

    v: Literal[1] = SCHEMA_VERSION
    batches: list[ReadingBatch]


def encode_partition_batch(encoded_batches: list[bytes]) -> bytes:
    """Fast path used by the gateway: a :class:`PartitionBatch` from already encoded device batches."""
    return b'{"v":1,"batches":[' + b",".join(encoded_batches) + b"]}"


def device_batches(value: object) -> list:
    """The device batches inside a decoded readings-topic value: the list of a :class:`PartitionBatch`, or
    ``[value]`` for a :class:`ReadingBatch` (or anything else, for the caller's own validation)."""
    if isinstance(value, dict) and "batches" in value and "readings" not in value:
        batches = value["batches"]
        return batches if isinstance(batches, list) else [batches]
    return [value]


class WindowAggregate(BaseModel):
    """Value of a record on the aggregates topic (key = device id): one closed tumbling window of one
    device x metric."""

    v: Literal[1] = SCHEMA_VERSION
    device_id: str
    device_type: str
    metric: str
    window_s: int
    start: int = Field(description="window start, epoch ms (inclusive)")
    end: int = Field(description="window end, epoch ms (exclusive)")
    count: int
    min: float
    max: float
    mean: float
    std: float
    late: int = Field(0, description="readings that arrived after the window end, within the grace period")


class AggregateBatch(BaseModel):
    """A message on the Redis aggregates channel in partition mode: the aggregates of one stream flush (up to
    1,000 per message; a flush with a single aggregate publishes it alone, as device mode does). Every
    device's 10 s windows close within the same second, so one message per aggregate was a burst of ~25,000
    pub/sub messages every 10 s at 5,000 devices (docs/performance.md)."""

    v: Literal[1] = SCHEMA_VERSION
    aggregates: list[WindowAggregate]


def encode_aggregate_batch(encoded_aggregates: list[bytes]) -> bytes:
    """An :class:`AggregateBatch` from already encoded aggregates."""
    return b'{"v":1,"aggregates":[' + b",".join(encoded_aggregates) + b"]}"


def channel_aggregates(value: object) -> list:
    """The aggregates inside a decoded aggregates-channel message: the list of an :class:`AggregateBatch`,
    or ``[value]`` for a single aggregate (device mode)."""
    if isinstance(value, dict) and "aggregates" in value and "window_s" not in value:
        items = value["aggregates"]
        return items if isinstance(items, list) else [items]
    return [value]


AlertState = Literal["open", "resolved"]
Severity = Literal["info", "warning", "critical"]


class Alert(BaseModel):
    """Value of a record on the alerts topic (key = device id). An alert is opened once per device x rule
    (x metric) and later resolved; both events carry the same ``alert_id``."""

    v: Literal[1] = SCHEMA_VERSION
    alert_id: str = Field(description="deterministic: device, rule, metric and the first reading's time")
    device_id: str
    device_type: str
    metric: str | None = Field(None, description="None for device-level rules (silence)")
    rule: str = Field(description="threshold|zscore|rate_of_change|flatline|silence|...")
    severity: Severity
    state: AlertState
    value: float | None = None
    expected_min: float | None = None
    expected_max: float | None = None
    first_seen: int = Field(description="epoch ms")
    last_seen: int = Field(description="epoch ms")
    resolved_at: int | None = None
    message: str = ""


# The same two contracts as the stream jobs build them: plain dicts at runtime (a pydantic model per window
# or alert event would cost the hot path), typed for mypy. Build them by calling the TypedDict with
# keywords -- ``AlertEvent(v=SCHEMA_VERSION, ...)`` -- so a missing or misspelt field is a type error;
# tests/iotp/test_schema_events.py holds them to the pydantic models' fields.


class WindowAggregateEvent(TypedDict):
    """A :class:`WindowAggregate`, as ``stream_jobs.windows`` emits it."""

    v: Literal[1]
    device_id: str
    device_type: str
    metric: str
    window_s: int
    start: int
    end: int
    count: int
    min: float
    max: float
    mean: float
    std: float
    late: int


class AlertEvent(TypedDict):
    """An :class:`Alert`, as ``stream_jobs.detectors`` emits it."""

    v: Literal[1]
    alert_id: str
    device_id: str
    device_type: str
    metric: str | None
    rule: str
    severity: Severity
    state: AlertState
    value: float | None
    expected_min: float | None
    expected_max: float | None
    first_seen: int
    last_seen: int
    resolved_at: int | None
    message: str
