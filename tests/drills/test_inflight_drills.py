"""In-flight drills (issue 10) on the default, durable local broker: a service is killed while readings are
being published, and every reading the MQTT broker acknowledged still reaches ClickHouse exactly once (by
identity) and Redis' latest state. Unlike tests/drills/test_restart_drills.py (memory broker: offsets of a
wiped log), nothing here may be lost at all: the records in Kafka survive the kill.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from infra.stack import LocalStack
from iotp.settings import Settings
from iotp.topics import mqtt_topic
from tests.drills.support import Pipeline, own_stack
from tests.drills.test_restart_drills import _kill9_service
from tests.gateway.helpers import PacedPublisher
from tests.support.mqtt_publish import reading
from tests.support.processes import ProcessGroup
from tests.support.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.integration

DEVICES, PER_DEVICE, RATE = 20, 60, 200.0  # 1,200 readings over ~6 s


@pytest.fixture
def durable_stack(tmp_path) -> Iterator[tuple[LocalStack, Settings]]:
    with own_stack(tmp_path, "s3") as stack_and_settings:
        yield stack_and_settings


async def _all_delivered(p: Pipeline, tag: str, sent: list[dict]) -> None:
    last = {r["device_id"]: r["seq"] for r in sent}
    async with httpx.AsyncClient(base_url=p.settings.api_url, headers=p.headers, timeout=10) as http:

        async def stored():
            check = (await http.get("/api/pipeline/ingest-check", params={"device_prefix": f"{tag}-"})).json()
            return check if check["readings"] >= len(sent) else False

        async def current():
            for device_id, seq in last.items():
                resp = await http.get(f"/api/devices/{device_id}")
                if resp.status_code != 200 or resp.json().get("seq") != seq:
                    return False
            return True

        try:
            check = await async_wait_for(stored, timeout=120, message="every acknowledged reading in ClickHouse")
            await async_wait_for(current, timeout=30, message="the last reading of every device in Redis")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; counters {await p.stats()}\n{p.logs()}") from None
    assert check["readings"] == len(sent) and check["devices"] == DEVICES, check
    assert check["missing_in_sequence"] == 0, check


@pytest.mark.parametrize("service", ["kafka", "kafka-store"])
def test_kill_9_mid_stream_loses_no_acknowledged_reading(durable_stack, tmp_path, service):
    """kill -9 of the broker (or of its store) while 1,200 readings are published at 200/s."""
    stack, settings = durable_stack
    p = Pipeline(settings, ProcessGroup(settings, tmp_path / "logs"))
    p.start()
    try:
        asyncio.run(p.wait_ready())
        tag = f"inflight-{uuid.uuid4().hex[:6]}"
        now = int(time.time() * 1000)
        sent = [
            reading(f"{tag}-{d}", seq, ts_ms=now + seq * 10, temperature=20.0 + seq / 100)
            for seq in range(1, PER_DEVICE + 1)
            for d in range(DEVICES)
        ]
        items = [(mqtt_topic(settings, r["device_type"], r["device_id"]), orjson.dumps(r)) for r in sent]
        publisher = PacedPublisher(settings, items, RATE)
        publisher.start()
        wait_for(lambda: publisher.published >= len(items) // 4, 30, message="publishing under way")
        _kill9_service(stack, service)
        publisher.join(120)
        assert not publisher.is_alive() and publisher.error is None, publisher.error
        asyncio.run(_all_delivered(p, tag, sent))
    finally:
        p.stop()
