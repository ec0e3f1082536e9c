"""iotp.kafka.install_lz4_level: aiokafka's own record batch builder compresses at the level asked for.

The batch is built by the class aiokafka's producer uses (the Cython builder when compiled, as here), once
uncompressed and once with lz4; the compressed records must be exactly cramjam's lz4 frame of the
uncompressed ones at that level, and decode back to the same records.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka import codec
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from iotp.kafka import AIOKAFKA_LZ4_LEVEL, install_lz4_level, make_producer
from iotp.settings import Settings

NONE, LZ4 = 0, 3  # Kafka's compression type codes
HEADER = 61  # bytes of a v2 record batch header; the (compressed) records follow


@pytest.fixture(autouse=True)
def _aiokafka_default_after() -> Iterator[None]:
    yield
    install_lz4_level(AIOKAFKA_LZ4_LEVEL)


def batch(compression: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression, is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for i in range(200):
        value = b'{"device_id":"dev-%05d","metrics":{"voltage":%d.25,"current":4.%d}}' % (i, 200 + i % 40, i)
        builder.append(i, timestamp=1_764_626_000_000 + i, key=None, value=value, headers=[])
    return bytes(builder.build())


@pytest.mark.parametrize("level", [1, 0, 9])
def test_the_producer_s_batches_are_compressed_at_the_installed_level(level: int) -> None:
    assert install_lz4_level(level)
    plain, packed = batch(NONE), batch(LZ4)
    assert packed[HEADER:] == codec.lz4_encode(plain[HEADER:], level=level)
    records = [(r.offset, r.value) for r in DefaultRecordBatch(packed)]
    assert records == [(r.offset, r.value) for r in DefaultRecordBatch(plain)]


async def test_a_producer_made_from_the_settings_compresses_at_their_level() -> None:
    # aiokafka alone would use level 9 (LZ4 HC); the settings' default is 1
    settings = Settings(kafka_bootstrap="127.0.0.1:1")  # never connected: only the factory runs
    make_producer(settings)
    plain, packed = batch(NONE), batch(LZ4)
    assert settings.kafka_lz4_level == 1
    assert packed[HEADER:] == codec.lz4_encode(plain[HEADER:], level=1)
    assert packed[HEADER:] != codec.lz4_encode(plain[HEADER:], level=AIOKAFKA_LZ4_LEVEL)
