"""Helpers for the stream job integration tests: produce device batches, watch output topics."""

from __future__ import annotations

import asyncio
import contextlib
import random

import orjson
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from iotp.kafka import make_consumer, make_producer
from iotp.schema import encode_batch, now_ms
from iotp.settings import Settings
from iotp.topics import redis_names


def readings(seqs_ts_values: list[tuple[int, int, dict]], rx: int | None = None) -> list[dict]:
    rx = now_ms() if rx is None else rx
    return [{"id": "", "seq": s, "ts": ts, "rx": rx, "metrics": m} for s, ts, m in seqs_ts_values]


def noise(n: int, mean: float = 45.0, sd: float = 0.5, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [round(mean + rng.gauss(0, sd), 3) for _ in range(n)]


class Producer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = make_producer(settings, compression_type=None)

    async def __aenter__(self) -> Producer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.producer.stop()

    async def send(self, device_id: str, rs: list[dict], device_type: str = "climate") -> None:
        for r in rs:
            r["id"] = f"{device_id}:{r['seq']}"
        await self.producer.send_and_wait(
            self.settings.topic_readings, key=device_id.encode(), value=encode_batch(device_id, device_type, rs)
        )

    async def send_together(self, device_id: str, batches: list[list[dict]], device_type: str = "climate") -> None:
        """Several records of one device in one produce request, so the worker fetches them together (as a
        backlog arrives) and its wall-clock tick cannot close a window between them."""
        futures = []
        for rs in batches:
            for r in rs:
                r["id"] = f"{device_id}:{r['seq']}"
            futures.append(
                await self.producer.send(
                    self.settings.topic_readings, key=device_id.encode(), value=encode_batch(device_id, device_type, rs)
                )
            )
        await asyncio.gather(*futures)


class TopicWatcher:
    """Reads the aggregates and alerts topics from the beginning, in the background (no group)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: dict[str, list[dict]] = {settings.topic_aggregates: [], settings.topic_alerts: []}
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> TopicWatcher:
        self.consumer = make_consumer(self.settings, group_id=None)
        await self.consumer.start()
        tps = [TopicPartition(t, p) for t in self.records for p in range(self.settings.kafka_partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for tp, msgs in batches.items():
                self.records[tp.topic].extend(orjson.loads(m.value) for m in msgs)

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.consumer.stop()

    def alerts(self, device_id: str, rule: str | None = None) -> list[dict]:
        return [
            a
            for a in self.records[self.settings.topic_alerts]
            if a["device_id"] == device_id and (rule is None or a["rule"] == rule)
        ]

    def aggregates(self, device_id: str) -> list[dict]:
        return [a for a in self.records[self.settings.topic_aggregates] if a["device_id"] == device_id]


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.from_url(settings.redis_url, decode_responses=True)


async def device_hash(r: aioredis.Redis, settings: Settings, device_id: str) -> dict:
    return await r.hgetall(redis_names(settings).device_key(device_id))
