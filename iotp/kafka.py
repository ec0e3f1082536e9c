"""aiokafka producer/consumer factories from the settings (one place for client tuning)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, codec
from aiokafka.partitioner import murmur2
from aiokafka.record import default_records

from iotp.settings import Settings

log = logging.getLogger("iotp.kafka")

AIOKAFKA_VERSION = "0.14.0"
AIOKAFKA_LZ4_LEVEL = 9  # what aiokafka.codec.lz4_encode uses when nobody says otherwise


def install_lz4_level(level: int) -> bool:
    """Make aiokafka compress lz4 record batches at ``level``.

    aiokafka 0.14 has no setting for it: its record batch builders (the Cython one and the pure-Python
    fallback) call ``codec.lz4_encode(data)``, whose default level is 9, LZ4 HC. On the gateway's
    partition batches (~66 KiB of readings JSON) that is ~0.95 ms of CPU per batch against ~0.09 ms at
    level 1, for output 26 % smaller (``benchmarks/kafka_codec_bench.py``). The builders look the
    function up as a module global on every batch, so this replaces that global with one bound to
    ``level``. Only for the aiokafka version it was checked against (:data:`AIOKAFKA_VERSION`); any other
    keeps its own level (logged). Returns whether it was installed."""
    if aiokafka.__version__ != AIOKAFKA_VERSION:
        log.info("aiokafka %s is not %s: lz4 level left at its default", aiokafka.__version__, AIOKAFKA_VERSION)
        return False
    encode = codec.lz4_encode if level == AIOKAFKA_LZ4_LEVEL else functools.partial(codec.lz4_encode, level=level)
    modules = [default_records]
    try:
        from aiokafka.record._crecords import default_records as cython_records
    except ImportError:  # no compiled extensions: the Python builder only
        pass
    else:
        modules.append(cython_records)
    for module in modules:
        module.lz4_encode = encode
    return True


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    compression = settings.kafka_compression if settings.kafka_compression not in (None, "none") else None
    if compression == "lz4":
        install_lz4_level(settings.kafka_lz4_level)
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        compression_type=compression,
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=30000,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The local broker holds each JoinGroup for session_timeout/2: keep it short (LOCAL_INFRA.md).
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner chooses for ``key`` among ``partitions`` partitions
    (murmur2 of the key bytes, made positive, modulo the count): the Java client's and aiokafka's
    ``DefaultPartitioner`` rule. Partition-mode records are sent to it explicitly, so a device lands where
    its device-keyed records would."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
