"""Partition mode's record layout: the partition chosen for a device is exactly Kafka's default
partitioner's for the device id as key, and a PartitionBatch decodes back into its device batches."""

from __future__ import annotations

import orjson
from aiokafka.partitioner import DefaultPartitioner

from history.sink import decode_readings
from iotp.kafka import partition_for
from iotp.schema import PartitionBatch, device_batches, encode_batch, encode_partition_batch
from iotp.settings import Settings


def test_partition_equals_aiokafkas_default_partitioner_for_the_device_key() -> None:
    partitioner = DefaultPartitioner()
    ids = [f"climate-{i:04d}" for i in range(2000)] + ["a", "Z9", "dev.with-dots_1", "x" * 64, "ü-device"]
    for count in (1, 2, 3, 4, 7, 12, 64):
        all_partitions = list(range(count))
        for device_id in ids:
            key = device_id.encode()
            assert partition_for(key, count) == partitioner(key, all_partitions, all_partitions), (device_id, count)


def test_partitions_are_spread() -> None:
    counts = [0] * 4
    for i in range(4000):
        counts[partition_for(f"climate-{i:04d}".encode(), 4)] += 1
    assert min(counts) > 800, counts


def _batch(device_id: str, seq: int) -> bytes:
    r = {"id": f"{device_id}:{1000 + seq}:{seq}", "seq": seq, "ts": 1000 + seq, "rx": 1000 + seq, "metrics": {"t": 1.5}}
    return encode_batch(device_id, "climate", [r])


def test_partition_batch_round_trip_and_schema() -> None:
    encoded = [_batch("a", 1), _batch("b", 2), _batch("c", 3)]
    raw = encode_partition_batch(encoded)
    value = orjson.loads(raw)
    PartitionBatch.model_validate(value)  # the documented schema
    assert device_batches(value) == [orjson.loads(e) for e in encoded]
    single = orjson.loads(encoded[0])
    assert device_batches(single) == [single]  # a device-mode record is one device batch


def test_sink_rows_of_a_partition_record_equal_its_device_records() -> None:
    encoded = [_batch("a", 1), _batch("b", 2)]
    assert decode_readings(encode_partition_batch(encoded)) == [row for e in encoded for row in decode_readings(e)]


def test_take_size_follows_the_record_mode_unless_set() -> None:
    assert Settings().stream_take == 500
    assert Settings(kafka_record_mode="partition").stream_take == 20  # ~20k readings per flush at 20k devices
    assert Settings(kafka_record_mode="partition", stream_take_max=100).stream_take == 100
