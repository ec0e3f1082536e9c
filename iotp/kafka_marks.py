"""Is a stored Kafka offset still about the same log? Reset detection for state that uses offsets as identity.

The stream job's Redis snapshots and the ClickHouse sink's insert plans remember Kafka offsets ("everything
below offset N is applied", "block [first..last] carries token T"). An offset only means something within one
incarnation of a topic partition: a wiped in-memory broker, a topic deleted and recreated, or a truncated log
start numbering again at 0, with other records. State from another incarnation must never be used to skip or
deduplicate new records.

So next to an offset we store a :class:`Mark`: the offset and the *fingerprint* of the record just below it
(Kafka timestamp + CRC32 of the value). :func:`check_marks` reads that one record again with a short-lived
consumer (no group: assign, seek, fetch) and compares. It works the same on Apache Kafka and on the local
broker, and it uses the Fetch high watermark, not ``ListOffsets(latest)`` (wrong on tansu 0.6.0 for batches,
see LOCAL_INFRA.md).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from iotp.settings import Settings

log = logging.getLogger("iotp.kafka_marks")


def fingerprint(timestamp_ms: int, value: bytes | None) -> str:
    """What identifies a record at a given offset across incarnations: its timestamp and content (the
    value of a readings record names its device, so the key adds nothing)."""
    return f"{int(timestamp_ms)}:{zlib.crc32(value or b''):08x}"


@dataclass(frozen=True, slots=True)
class Mark:
    """``offset`` (exclusive: everything below is done) and the fingerprint of the record at ``offset - 1``."""

    offset: int
    fingerprint: str

    def encode(self) -> str:
        return f"{self.offset}|{self.fingerprint}"

    @classmethod
    def decode(cls, text: str | bytes) -> Mark:
        if isinstance(text, bytes):
            text = text.decode()
        offset, _, fp = text.partition("|")
        return cls(int(offset), fp)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``valid`` or why not (``reason``); ``unknown`` when the broker did not answer in time."""

    valid: bool
    reason: str = ""
    highwater: int | None = None

    @property
    def unknown(self) -> bool:
        return not self.valid and self.reason.startswith("unverified")


VALID = Verdict(True)


async def check_marks(settings: Settings, marks: dict[TopicPartition, Mark], timeout_s: float = 10.0) -> dict:
    """Verdict per partition: is the record at ``mark.offset - 1`` still the one the mark describes?

    Invalid when the offset is above the partition's high watermark (the log is shorter than the state
    says), when the record is below the log start or missing, or when its fingerprint differs. A mark at
    offset <= 0 refers to no record and is valid. A broker that does not answer within ``timeout_s`` gives
    ``unverified`` (the caller decides; the stream job and the sink both treat it as a reset, which costs a
    replay of idempotent effects rather than skipped records)."""
    # aiokafka wants its own TopicPartition type (Faust's TP is another named tuple)
    marks = {TopicPartition(tp.topic, tp.partition): m for tp, m in marks.items()}
    out: dict[TopicPartition, Verdict] = {tp: VALID for tp, m in marks.items() if m.offset <= 0}
    todo = {tp: m for tp, m in marks.items() if m.offset > 0}
    if not todo:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",  # a position below the log start / above the end must raise, not move
        fetch_max_wait_ms=min(settings.kafka_fetch_max_wait_ms, 200),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        request_timeout_ms=int(timeout_s * 1000) + 5000,
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        partitions = {t: consumer.partitions_for_topic(t) for t in {tp.topic for tp in todo}}
        for tp in list(todo):
            known = partitions.get(tp.topic)
            if known is not None and tp.partition not in known:
                out[tp] = Verdict(False, "partition does not exist (topic deleted or recreated)")
                del todo[tp]
        consumer.assign(list(todo))
        for tp, mark in todo.items():
            consumer.seek(tp, mark.offset - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while todo and loop.time() < deadline:
            try:
                batch = await consumer.getmany(*todo, timeout_ms=200, max_records=len(todo) * 4)
            except OffsetOutOfRangeError as exc:
                for tp in list(exc.args[0] if exc.args and isinstance(exc.args[0], dict) else todo):
                    if tp in todo:
                        out[tp] = Verdict(False, f"offset {todo[tp].offset - 1} is out of the log's range")
                        del todo[tp]
                if todo:
                    consumer.assign(list(todo))
                    for tp, mark in todo.items():
                        consumer.seek(tp, mark.offset - 1)
                continue
            for tp, records in batch.items():
                if tp not in todo:
                    continue
                mark = todo[tp]
                record = next((r for r in records if r.offset == mark.offset - 1), None)
                hw = consumer.highwater(tp)
                if record is None:
                    if records and records[0].offset > mark.offset - 1:
                        reason = f"record {mark.offset - 1} is gone (log starts at {records[0].offset})"
                    else:
                        continue
                    out[tp] = Verdict(False, reason, hw)
                elif fingerprint(record.timestamp, record.value) != mark.fingerprint:
                    out[tp] = Verdict(False, f"record {mark.offset - 1} differs (another incarnation)", hw)
                else:
                    out[tp] = Verdict(True, "", hw)
                del todo[tp]
            for tp in list(todo):  # nothing at the position: is it at or beyond the end of the log?
                hw = consumer.highwater(tp)
                if hw is not None and todo[tp].offset > hw:
                    out[tp] = Verdict(False, f"offset {todo[tp].offset} is above the high watermark {hw}", hw)
                    del todo[tp]
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("checking stored offsets failed: %r", exc)
    finally:
        await consumer.stop()
    for tp in todo:
        out[tp] = Verdict(False, "unverified: the broker did not return the record in time")
    return out
