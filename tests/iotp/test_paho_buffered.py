"""iotp.paho_buffered on the event loop against the real Mosquitto: a backlog arrives complete and in order
through chunked reads and the client's own PUBLISH decoding, also when reading is paused with packets still
in the buffer, and a burst of
PUBACKs goes out in one write that the broker takes (no redelivery after a reconnect).

Stock paho makes 3+ socket reads per packet and one write per PUBACK; the bounds below are 10x under that.
"""

from __future__ import annotations

import asyncio
import uuid

import paho.mqtt.client as mqtt
import pytest

from iotp.mqtt import connect, make_client
from iotp.mqtt_asyncio import AsyncioMqtt
from iotp.paho_buffered import BufferedClient, supported
from iotp.settings import Settings
from tests.support.mqtt_publish import publish_payloads
from tests.support.services import as_role
from tests.support.waiting import until

pytestmark = pytest.mark.skipif(not supported(), reason="paho version without the buffered client")


class Subscriber:
    """A buffered, persistent-session QoS 1 subscriber driven by AsyncioMqtt (the gateway's account); records
    payloads and mids."""

    def __init__(self, settings: Settings, topic: str, client_id: str, *, manual_ack: bool = False) -> None:
        settings = as_role(settings, "gateway")  # the account that may read device topics
        self.client = make_client(settings, client_id, clean_start=False, manual_ack=manual_ack, buffered=True)
        assert isinstance(self.client, BufferedClient)
        self.received: list[bytes] = []
        self.mids: list[int] = []
        self.subscribed = False
        self.on_each = lambda: None
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.mq = AsyncioMqtt(self.client, lambda: connect(self.client, settings, session_expiry_s=120))

    def _on_subscribe(self, *args: object) -> None:
        self.subscribed = True

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.received.append(msg.payload)
        self.mids.append(msg.mid)
        self.on_each()

    async def start(self) -> None:
        await self.mq.connect()
        await until(lambda: self.subscribed, timeout=10, message="SUBACK")

    async def stop(self) -> None:
        await self.mq.close()


def _items(topic_base: str, n: int, tag: str) -> list[tuple[str, bytes]]:
    return [(f"{topic_base}/{i % 50}", f"{tag}-{i:05d}".encode()) for i in range(n)]


async def test_a_backlog_arrives_in_order_through_few_reads_while_reading_pauses_and_resumes(
    isolated_settings: Settings,
) -> None:
    base = f"{isolated_settings.mqtt_topic_prefix}/buffered"
    sub = Subscriber(isolated_settings, f"{base}/#", f"buf-{uuid.uuid4().hex[:8]}")
    await sub.start()
    loop = asyncio.get_running_loop()

    def pause_now_and_then() -> None:  # like the gateway's in-flight window: stop reading mid-buffer, go on later
        if len(sub.received) % 7 == 0:
            sub.mq.pause_reading()
            loop.call_later(0.002, sub.mq.resume_reading)

    sub.on_each = pause_now_and_then
    sub.mq.pause_reading()  # the whole backlog queues at the broker and in TCP first
    items = _items(base, 3000, "a")
    await asyncio.to_thread(publish_payloads, isolated_settings, items)
    reads_before = sub.client.socket_reads
    sub.mq.resume_reading()
    try:
        await until(lambda: len(sub.received) >= len(items), timeout=30, message=f"{len(items)} messages")
    finally:
        await sub.stop()
    assert sub.received == [payload for _, payload in items]
    reads = sub.client.socket_reads - reads_before
    assert reads <= len(items) // 10, f"{reads} socket reads for {len(items)} packets"
    # and all but the packets cut by a chunk's end (at most one per read) went through its own decoding
    assert sub.client.fast_publishes >= len(items) - reads, f"{sub.client.fast_publishes} decoded fast"


async def test_a_burst_of_pubacks_goes_out_in_one_write_and_the_broker_takes_every_ack(
    isolated_settings: Settings,
) -> None:
    base = f"{isolated_settings.mqtt_topic_prefix}/acks"
    client_id = f"acks-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(isolated_settings, f"{base}/#", client_id, manual_ack=True)
    await sub.start()
    items = _items(base, 500, "b")
    await asyncio.to_thread(publish_payloads, isolated_settings, items)
    await until(lambda: len(sub.received) >= len(items), timeout=30, message=f"{len(items)} messages")
    writes_before = sub.client.socket_writes
    for mid in sub.mids:  # the gateway acks like this when one Kafka ack releases many messages
        sub.client.ack(mid, 1)
    await until(lambda: not sub.client.want_write(), timeout=10, message="the PUBACKs to be written")
    writes = sub.client.socket_writes - writes_before
    await sub.stop()
    assert writes <= 3, f"{writes} socket writes for {len(items)} PUBACKs"

    # Same persistent session again: an ack the broker did not take would be redelivered before the sentinel.
    again = Subscriber(isolated_settings, f"{base}/#", client_id, manual_ack=True)
    await again.start()
    try:
        await asyncio.to_thread(publish_payloads, isolated_settings, [(f"{base}/sentinel", b"sentinel")])
        await until(lambda: b"sentinel" in again.received, timeout=30, message="the sentinel")
    finally:
        await again.stop()
    assert again.received == [b"sentinel"]


async def test_per_topic_callbacks_still_get_their_messages_and_the_rest_go_to_on_message(
    isolated_settings: Settings,
) -> None:
    base = f"{isolated_settings.mqtt_topic_prefix}/filtered"
    sub = Subscriber(isolated_settings, f"{base}/#", f"flt-{uuid.uuid4().hex[:8]}")
    filtered: list[bytes] = []
    sub.client.message_callback_add(f"{base}/7", lambda c, u, msg: filtered.append(msg.payload))
    await sub.start()
    items = _items(base, 200, "c")
    await asyncio.to_thread(publish_payloads, isolated_settings, items)
    try:
        await until(
            lambda: len(sub.received) + len(filtered) >= len(items), timeout=30, message=f"{len(items)} messages"
        )
    finally:
        await sub.stop()
    assert filtered == [payload for topic, payload in items if topic.endswith("/7")]
    assert sub.received == [payload for topic, payload in items if not topic.endswith("/7")]
