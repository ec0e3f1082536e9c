"""AsyncioMqtt's connect retries (through iotp.retry) and stops retrying once closed; no broker needed."""

from __future__ import annotations

import asyncio
import itertools
import logging

import paho.mqtt.client as mqtt
import pytest

from iotp.mqtt_asyncio import AsyncioMqtt


def _client() -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)


async def test_connect_retries_until_the_broker_answers(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def connect() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 4:
            raise ConnectionRefusedError("refused")

    mq = AsyncioMqtt(_client(), connect, min_backoff=0.01, max_backoff=0.02)
    with caplog.at_level(logging.WARNING, logger="iotp.mqtt"):
        await asyncio.wait_for(mq.connect(), 5)
    assert len(calls) == 4
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.009 for g in gaps)  # 0.01, 0.02, 0.02 (capped)
    assert [r.getMessage() for r in caplog.records] == [
        "MQTT not reachable (ConnectionRefusedError: refused); retrying in 0.0s"
    ] * 3


async def test_close_stops_connect_retries() -> None:
    calls = 0

    def connect() -> None:
        nonlocal calls
        calls += 1
        raise OSError("down")

    mq = AsyncioMqtt(_client(), connect, min_backoff=0.01, max_backoff=0.01)
    task = asyncio.create_task(mq.connect())
    await asyncio.sleep(0.05)
    assert not task.done() and calls >= 2
    await mq.close()
    await asyncio.wait_for(task, 1)  # returns, no exception
    seen = calls
    await asyncio.sleep(0.05)
    assert calls == seen
