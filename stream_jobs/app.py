"""The Faust application: topics and agents. Run with ``iotp stream``.

Records on the readings topic are device batches (see ``iotp.schema``); one Faust event therefore
carries many readings, which keeps Faust's per-event overhead off the per-reading budget.
"""

from __future__ import annotations

import time

import faust
import redis.asyncio as aioredis

from iotp.schema import decode_batch
from iotp.settings import Settings, get_settings
from iotp.topics import redis_names
from stream_jobs.redis_state import LatestState


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.stream_app_id,
        broker=[f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication,
        # The local broker holds each JoinGroup for session_timeout/2 (see LOCAL_INFRA.md).
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
    )
    readings_topic = app.topic(settings.topic_readings, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")
    # from_url connects lazily, on the worker's event loop.
    latest = LatestState(aioredis.from_url(settings.redis_url), redis_names(settings))

    @app.agent(readings_topic)
    async def process_readings(stream):
        async for raw in stream:
            batch = decode_batch(raw)
            await latest.apply_batch(batch, int(time.time() * 1000))

    return app


app = create_app(get_settings())
