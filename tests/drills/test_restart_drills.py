"""Restart drills (issue 10): after each event, N new readings of fresh devices are all in ClickHouse,
current in Redis and on the WebSocket -- never skipped or deduplicated against state that belongs to another
incarnation of the topics.

The broker runs with ``kafka_storage=memory`` here: a broker restart then wipes every topic, record and
committed offset, while the stream snapshots (Redis) and the sink plans (ClickHouse) keep offsets of the old
log. That is the case the reset detection exists for (``iotp.kafka_marks``); with the durable store the same
drills pass trivially. Readings published before a wipe and not yet consumed are the broker's durability
(tests/infra/test_kafka_durability.py), not checked here.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from infra.kafka_admin import create_topics, create_topics_sync
from infra.ports import port_open
from infra.stack import LocalStack
from iotp.settings import Settings
from tests.drills.support import Pipeline, fresh_tag, own_stack
from tests.support.processes import ProcessGroup
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BEFORE_ROUNDS, BEFORE_DEVICES = 4, 24  # enough records per partition that the old offsets lie above the new
DEVICES, PER_DEVICE = 6, 10  # the new readings checked after the event


@pytest.fixture(name="own_stack")
def _own_stack(tmp_path) -> Iterator[tuple[LocalStack, Settings]]:
    """A stack of its own, broker in memory."""
    with own_stack(tmp_path, "memory") as stack_and_settings:
        yield stack_and_settings


@pytest.fixture
def pipeline(own_stack, tmp_path) -> Iterator[Pipeline]:
    _, settings = own_stack
    p = Pipeline(settings, ProcessGroup(settings, tmp_path / "logs"))
    p.start()
    yield p
    p.stop()


async def _history(p: Pipeline) -> None:
    """Offsets worth remembering: several rounds of readings, each fully processed, so the stream snapshots
    and the sink plans hold offsets well above what the new log will have."""
    await p.wait_ready()
    for i in range(BEFORE_ROUNDS):
        await p.flow(fresh_tag(f"old{i}"), BEFORE_DEVICES, 2)


def _pid(stack: LocalStack, name: str) -> int | None:
    row = next(r for r in stack.status() if r["name"] == name)
    return row["pid"] if row["state"] in ("STARTING", "RUNNING") else None


def _kill9_service(stack: LocalStack, name: str) -> None:
    old = _pid(stack, name)
    assert old
    os.kill(old, signal.SIGKILL)
    endpoint = next(e for e in stack.endpoints() if e.name == name)
    wait_for(
        lambda: _pid(stack, name) not in (None, old) and port_open(endpoint.host, endpoint.port),
        timeout=60,
        message=f"supervisord to restart {name}",
    )


async def _after(p: Pipeline) -> None:
    try:
        await p.wait_ready()
        await p.flow(fresh_tag("new"), DEVICES, PER_DEVICE, timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{p.logs()}") from None


def test_whole_stack_stop_and_start(own_stack, pipeline):
    stack, settings = own_stack
    asyncio.run(_history(pipeline))
    pipeline.stop()
    stack.down()
    stack.up()
    create_topics_sync(settings)  # the pipeline's own topic names (`iotp stack up` creates the configured ones)
    pipeline.start()
    asyncio.run(_after(pipeline))


def test_broker_kill_9(own_stack, pipeline):
    stack, settings = own_stack
    asyncio.run(_history(pipeline))
    _kill9_service(stack, "kafka")
    create_topics_sync(settings)  # as `iotp stack up` would; a producer would otherwise auto-create them
    asyncio.run(_after(pipeline))


def test_redis_kill_9(own_stack, pipeline):
    stack, _ = own_stack
    asyncio.run(_history(pipeline))
    _kill9_service(stack, "redis")
    asyncio.run(_after(pipeline))


async def _recreate_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = [settings.topic_readings, settings.topic_aggregates, settings.topic_alerts]
        await admin.delete_topics(topics)
    finally:
        await admin.close()
    await create_topics(settings)


def test_topics_deleted_and_recreated(isolated_settings, tmp_path):
    """On the session's broker (own topic names): the pipeline stops, the topics are deleted and created
    again (an operator's reset on real Kafka), the pipeline starts again."""
    settings = isolated_settings.model_copy(update={"sink_batch_seconds": 0.3})
    p = Pipeline(settings, ProcessGroup(settings, tmp_path / "logs"))
    p.start()
    try:
        asyncio.run(_history(p))
        p.stop()
        asyncio.run(_recreate_topics(settings))
        p.start()
        asyncio.run(_after(p))
    finally:
        p.stop()
