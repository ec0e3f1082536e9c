"""Kafka -> ClickHouse sink: large columnar (Arrow) batches, offsets committed only after the insert.

A batch is flushed when it reaches ``sink_batch_rows`` rows or ``sink_batch_seconds`` seconds, whichever
first. If the insert fails the sink keeps the batch, backs off and retries; it neither commits nor reads
further meanwhile, so the backlog waits in Kafka and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from iotp.kafka import make_consumer
from iotp.settings import Settings

log = logging.getLogger("iotp.sink")

READING_COLUMNS = ["device_id", "device_type", "metric", "ts", "value", "seq", "reading_id", "ingest_ts"]


@dataclass
class ReadingRows:
    """Column buffers for the raw readings table."""

    device_id: list[str] = field(default_factory=list)
    device_type: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    reading_id: list[str] = field(default_factory=list)
    ingest_ts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.value)

    def add_batch(self, batch: dict) -> None:
        device_id, device_type = batch["device_id"], batch["device_type"]
        for r in batch["readings"]:
            for metric, value in r["metrics"].items():
                self.device_id.append(device_id)
                self.device_type.append(device_type)
                self.metric.append(metric)
                self.ts.append(r["ts"])
                self.value.append(value)
                self.seq.append(r["seq"])
                self.reading_id.append(r["id"])
                self.ingest_ts.append(r["rx"])

    def to_arrow(self) -> pa.Table:
        ms = pa.timestamp("ms", tz="UTC")
        return pa.table({
            "device_id": pa.array(self.device_id, pa.string()),
            "device_type": pa.array(self.device_type, pa.string()),
            "metric": pa.array(self.metric, pa.string()),
            "ts": pa.array(self.ts, ms),
            "value": pa.array(self.value, pa.float64()),
            "seq": pa.array(self.seq, pa.uint64()),
            "reading_id": pa.array(self.reading_id, pa.string()),
            "ingest_ts": pa.array(self.ingest_ts, ms),
        })


class ClickHouseSink:
    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings = settings
        self.client = client
        self.table = f"{settings.clickhouse_database}.readings"
        self.rows_written = 0
        self.batches_written = 0

    def _insert(self, rows: ReadingRows) -> None:
        self.client.insert_arrow(self.table, rows.to_arrow())

    async def _insert_with_retry(self, rows: ReadingRows, stop: asyncio.Event) -> bool:
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self._insert, rows)
                return True
            except Exception as exc:
                log.warning("ClickHouse insert of %d rows failed (%s); retrying in %.1fs", len(rows), exc,
                            delay)
                if stop.is_set():
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self.settings, self.settings.topic_readings,
                                 group_id=self.settings.sink_group)
        await consumer.start()
        log.info("sink started: %s -> %s", self.settings.topic_readings, self.table)
        try:
            rows = ReadingRows()
            started = time.monotonic()
            while not stop.is_set():
                data = await consumer.getmany(timeout_ms=200, max_records=2000)
                for messages in data.values():
                    for message in messages:
                        rows.add_batch(orjson.loads(message.value))
                full = len(rows) >= self.settings.sink_batch_rows
                due = len(rows) and time.monotonic() - started >= self.settings.sink_batch_seconds
                if full or due:
                    if not await self._insert_with_retry(rows, stop):
                        return  # stopping with an unwritten batch: offsets not committed, Kafka keeps it
                    await consumer.commit()
                    self.rows_written += len(rows)
                    self.batches_written += 1
                    rows = ReadingRows()
                    started = time.monotonic()
                elif not len(rows):
                    started = time.monotonic()
        finally:
            await consumer.stop()
