"""history.blocks.form_blocks: which inserts one flush makes, and with which dedup tokens (pure logic)."""

from __future__ import annotations

from aiokafka import TopicPartition

from history.blocks import Buffer, Record, Target, form_blocks
from history.columns import aggregates_arrow, readings_arrow
from history.decode import decode_aggregate, decode_readings
from history.plans import Plan
from iotp.kafka_marks import fingerprint

READINGS = Target("db.readings", decode_readings, readings_arrow, True)
AGGREGATES = Target("db.window_aggregates", decode_aggregate, aggregates_arrow, False)
TARGETS = {"r": READINGS, "a": AGGREGATES}


def buffer(topic: str, partition: int, offsets: list[int], rejected: frozenset[int] = frozenset()) -> Buffer:
    records = [
        Record(topic, partition, o, 1000 + o, b"k", b"v%d" % o, [] if o in rejected else [("row", o)]) for o in offsets
    ]
    return Buffer(records, sum(len(r.rows) for r in records))


def test_a_new_readings_block_gets_a_plan_with_a_deterministic_token() -> None:
    tp = TopicPartition("r", 2)
    buffers = {tp: buffer("r", 2, [5, 6, 7], rejected=frozenset({6}))}
    (block,) = form_blocks([tp], buffers, TARGETS, {})
    assert block.target is READINGS
    assert [r.offset for r in block.records] == [5, 7]  # the reject is dead-lettered, not inserted
    assert block.token == "r:2:5-7:1005-1007"
    assert block.plan == (tp, Plan(5, 7, block.token, fingerprint(1007, b"v7")))
    assert form_blocks([tp], buffers, TARGETS, {})[0].token == block.token


def test_a_replayed_plan_keeps_its_token_and_is_not_planned_again() -> None:
    tp = TopicPartition("r", 0)
    (block,) = form_blocks([tp], {tp: buffer("r", 0, [3, 4])}, TARGETS, {tp: Plan(3, 4, "old-token")})
    assert block.token == "old-token" and block.plan is None


def test_other_topics_share_one_block_without_a_token() -> None:
    a0, a1, r0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("r", 0)
    buffers = {a0: buffer("a", 0, [1]), a1: buffer("a", 1, [8, 9]), r0: buffer("r", 0, [0])}
    blocks = form_blocks([a0, a1, r0], buffers, TARGETS, {})
    assert [(b.target.table, b.token is None, len(b.records)) for b in blocks] == [
        ("db.readings", False, 1),
        ("db.window_aggregates", True, 3),
    ]
    assert blocks[1].rows() == [("row", 1), ("row", 8), ("row", 9)]
