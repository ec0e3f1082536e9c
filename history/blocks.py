"""What the sink holds between reading Kafka and inserting: decoded records, per-partition buffers, and
the insert blocks formed from them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from aiokafka import TopicPartition

from history.plans import Plan
from iotp.kafka_marks import fingerprint


@dataclass(slots=True)
class Record:
    """One Kafka record and the rows decoded from it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    rows: list[tuple]
    reason: str | None = None  # why it goes to the dead-letter topic


@dataclass(frozen=True, slots=True)
class Target:
    """Where the records of one topic go, and how."""

    table: str
    decode: Callable[[bytes | None], list[tuple]]
    to_arrow: Callable[[list[tuple]], pa.Table]
    per_partition: bool  # one insert per Kafka partition with a planned, deterministic dedup token


@dataclass
class Buffer:
    """Records of one Kafka partition not yet written."""

    records: list[Record] = field(default_factory=list)
    rows: int = 0

    @property
    def first(self) -> int:
        return self.records[0].offset

    @property
    def last(self) -> int:
        return self.records[-1].offset


@dataclass
class Block:
    """One insert: records of one or more partitions into one table."""

    target: Target
    records: list[Record]
    token: str | None
    plan: tuple[TopicPartition, Plan] | None = None

    def rows(self) -> list[tuple]:
        return [row for r in self.records for row in r.rows]


def form_blocks(
    tps: list[TopicPartition],
    buffers: dict[TopicPartition, Buffer],
    targets: dict[str, Target],
    plans: dict[TopicPartition, Plan],
) -> list[Block]:
    """The inserts of one flush of the partitions ``tps``.

    A per-partition target (raw readings) gets one block per partition: with the token of its replayed
    plan, or with a new plan whose token is derived from the offsets and timestamps (deterministic, so a
    re-formed block carries the same one). The other targets get one block per topic, without a token
    (their tables deduplicate by key). Records that decoded to no rows (rejects) are left out."""
    blocks: list[Block] = []
    shared: dict[str, list[Record]] = {}
    for tp in tps:
        buffer = buffers[tp]
        target = targets[tp.topic]
        good = [r for r in buffer.records if r.rows]
        if target.per_partition:
            plan = plans.get(tp)
            if plan is None:
                first, last = buffer.records[0], buffer.records[-1]
                token = f"{tp.topic}:{tp.partition}:{first.offset}-{last.offset}:{first.timestamp}-{last.timestamp}"
                plan = Plan(first.offset, last.offset, token, fingerprint(last.timestamp, last.value))
                blocks.append(Block(target, good, token, (tp, plan)))
            else:
                blocks.append(Block(target, good, plan.token))
        else:
            shared.setdefault(tp.topic, []).extend(good)
    for topic, records in shared.items():
        if records:
            blocks.append(Block(targets[topic], records, None))
    return blocks
