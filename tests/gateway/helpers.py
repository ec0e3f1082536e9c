"""Kafka and MQTT helpers of the gateway tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from iotp.kafka import partition_for
from iotp.mqtt import connect, make_client
from iotp.schema import device_batches
from iotp.settings import Settings


async def read_until(
    settings: Settings, topic: str, done: Callable[[list[ConsumerRecord]], bool], timeout: float = 60.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, until ``done(records)`` or the timeout."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                records.extend(batch)
            if done(records):
                return records
    finally:
        await consumer.stop()
    return records


def reading_ids(records: list[ConsumerRecord], partitions: int = 4) -> list[str]:
    """Reading ids inside the device batches of the readings topic (duplicates kept). A device-mode record's
    key is its device id; a partition-mode record (no key) sits in the partition of each of its devices."""
    ids = []
    for rec in records:
        value = orjson.loads(rec.value)
        for batch in device_batches(value):
            if rec.key is None:
                assert "batches" in value
                assert partition_for(batch["device_id"].encode(), partitions) == rec.partition, batch["device_id"]
            else:
                assert rec.key.decode() == batch["device_id"]
            ids.extend(r["id"] for r in batch["readings"])
    return ids


def metric_value(port: int, name: str) -> float:
    """Sum of a Prometheus metric (all labels) scraped from a gateway's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


class PacedPublisher(threading.Thread):
    """Publishes ``(topic, payload)`` pairs at QoS 1 at about ``rate``/s in the background, then waits for
    every PUBACK."""

    def __init__(self, settings: Settings, items: list[tuple[str, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.items, self.rate = settings, items, rate
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = make_client(self.settings)
            connect(client, self.settings)
            client.loop_start()
            started = time.monotonic()
            infos = []
            for i, (topic, payload) in enumerate(self.items):
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                infos.append(client.publish(topic, payload, qos=1))
                self.published = i + 1
            for info in infos:
                info.wait_for_publish(60)
                assert info.is_published()
            client.disconnect()
            client.loop_stop()
        except BaseException as exc:
            self.error = exc
