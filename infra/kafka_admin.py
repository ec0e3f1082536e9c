"""Create the pipeline's Kafka topics with the partition counts the settings name."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from iotp.settings import Settings
from iotp.topics import kafka_topics


async def create_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the names that were created. Idempotent."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in kafka_topics(settings) if t.name not in existing]
        created = []
        for topic in wanted:
            try:
                await admin.create_topics([NewTopic(topic.name, topic.partitions, settings.kafka_replication)])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()


def create_topics_sync(settings: Settings) -> list[str]:
    return asyncio.run(create_topics(settings))
