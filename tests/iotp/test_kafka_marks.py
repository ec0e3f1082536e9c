"""``check_marks`` against the real broker: a mark is valid only while the record below its offset is the
one it fingerprints (same log), never after the topic was deleted and created again."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from infra.kafka_admin import create_topics
from iotp.kafka import make_producer
from iotp.kafka_marks import Mark, check_marks, fingerprint
from iotp.schema import now_ms

pytestmark = pytest.mark.integration


async def _produce(settings, values: list[bytes]) -> list[tuple[int, int]]:
    """(offset, timestamp) of each record. The timestamps are set explicitly, one ms apart: aiokafka 0.12's
    send metadata gives every record of a batch the *first* record's timestamp (``_ProducerBatch.done``
    overwrites it in its loop), so a fingerprint made from it is wrong for a later record whenever the
    batch spans a millisecond boundary -- a flake of this test on a slow machine."""
    producer = make_producer(settings)
    await producer.start()
    base = now_ms()
    try:
        futures = [
            await producer.send(settings.topic_readings, v, key=b"d", partition=0, timestamp_ms=base + i)
            for i, v in enumerate(values)
        ]
        return [((await f).offset, base + i) for i, f in enumerate(futures)]
    finally:
        await producer.stop()


async def test_marks_valid_in_the_same_log_and_invalid_in_another(isolated_settings):
    s = isolated_settings
    tp = TopicPartition(s.topic_readings, 0)
    values = [f"record-{i}".encode() for i in range(6)]
    meta = await _produce(s, values)
    good = Mark(meta[3][0] + 1, fingerprint(meta[3][1], values[3]))
    end = Mark(meta[-1][0] + 1, fingerprint(meta[-1][1], values[-1]))
    verdicts = await check_marks(s, {tp: good, TopicPartition(s.topic_readings, 1): Mark(0, "")})
    assert all(v.valid for v in verdicts.values()), verdicts
    assert (await check_marks(s, {tp: end}))[tp].valid
    assert not (await check_marks(s, {tp: Mark(good.offset, "1:00000000")}))[tp].valid
    above = (await check_marks(s, {tp: Mark(end.offset + 5, end.fingerprint)}))[tp]
    assert not above.valid and "high watermark" in above.reason

    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([s.topic_readings])
    finally:
        await admin.close()
    await create_topics(s)
    await _produce(s, [f"other-{i}".encode() for i in range(6)])  # the same offsets, other records
    verdict = (await check_marks(s, {tp: good}))[tp]
    assert not verdict.valid and "differs" in verdict.reason, verdict
