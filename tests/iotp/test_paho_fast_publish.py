"""iotp.paho_buffered's own PUBLISH decoding gives the callback exactly what paho's packet path gives it.

Frames go through a real socket pair into two clients, paho's stock ``Client`` and a ``BufferedClient``,
read with ``loop_read`` as the gateway's driver does; every field the callback sees, the return codes and
what each client queues to send back are compared. Frames the fast path does not take (QoS 2, MQTT 5
properties, a packet cut by the end of the buffer, malformed ones) must reach paho's path unchanged.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotp.paho_buffered import BufferedClient, IncomingMessage, supported

pytestmark = pytest.mark.skipif(not supported(), reason="paho version without the buffered client")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 1, dup: bool = False, retain: bool = False,
    v5: bool = True, props: bytes = b"\x00",
) -> bytes:  # fmt: skip
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += (props if v5 else b"") + payload
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return bytes([header]) + varint(len(body)) + body


def expiry_props() -> bytes:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 60
    return props.pack()


def seen(msg: mqtt.MQTTMessage) -> tuple:
    props = msg.properties.json() if msg.properties is not None else None
    return (msg._topic, msg.payload, msg.qos, msg.mid, msg.dup, msg.retain, props, type(msg.payload))


class Reader:
    """A client reading from one end of a socket pair, recording what ``on_message`` sees."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.here, self.there = socket.socketpair()
        self.here.setblocking(False)
        client._sock = self.here
        self.messages: list[tuple] = []
        self.codes: list[int] = []
        client.on_message = lambda c, u, msg: self.messages.append(seen(msg))

    def feed(self, data: bytes) -> None:
        self.there.sendall(data)
        for _ in range(10_000):  # until paho's path says "again" and nothing is buffered
            rc = self.client.loop_read()
            self.codes.append(int(rc))
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or self.client._sock is None:
                return
            if not getattr(self.client, "buffered", False) and not self._socket_has_data():
                return

    def _socket_has_data(self) -> bool:
        try:
            return bool(self.here.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False

    def queued(self) -> list[bytes]:
        return [bytes(p["packet"]) for p in self.client._out_packet]

    def close(self) -> None:
        self.here.close()
        self.there.close()


def pair(protocol: int, *, manual_ack: bool) -> Iterator[tuple[Reader, Reader]]:
    kwargs = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "protocol": protocol, "manual_ack": manual_ack}
    stock, fast = Reader(mqtt.Client(**kwargs)), Reader(BufferedClient(**kwargs))
    try:
        yield stock, fast
    finally:
        stock.close()
        fast.close()


FRAMES_V5 = [
    publish(b"iot/power/dev-1", b'{"v":1}', qos=1, mid=1),
    publish(b"iot/power/dev-2", b"", qos=0),
    publish(b"iot/power/dev-3", b"x" * 300, qos=1, mid=65535, dup=True, retain=True),
    publish(b"iot/power/dev-4", b"y" * 20_000, qos=1, mid=7),  # a 3-byte remaining length
    publish(b"iot/power/dev-5", b"with-props", qos=1, mid=8, props=expiry_props()),  # paho's path
    publish(b"iot/power/dev-6", b"qos2", qos=2, mid=9),  # paho's path: PUBREC, then waits for PUBREL
    publish(b"", b"alias-less empty topic", qos=0),  # allowed by MQTT 5's framing
]


@pytest.mark.parametrize("manual_ack", [True, False])
def test_mqtt5_frames_reach_the_callback_exactly_as_through_paho(manual_ack: bool) -> None:
    for stock, fast in pair(mqtt.MQTTv5, manual_ack=manual_ack):
        data = b"".join(FRAMES_V5)
        stock.feed(data)
        fast.feed(data)
        assert len(stock.messages) == 6  # the QoS 2 one waits for its PUBREL
        assert fast.messages == stock.messages
        assert fast.queued() == stock.queued()  # PUBACKs (when paho acks) and the PUBREC, in order
        assert fast.codes[-1] == stock.codes[-1] == 0
        # every QoS 0/1 frame without properties went the fast way, the first one after a socket read too
        assert fast.client.fast_publishes == 5


def test_mqtt311_frames_and_a_packet_cut_by_the_buffer_end() -> None:
    frames = [
        publish(f"iot/climate/d{i}".encode(), f"r{i}".encode() * 40, qos=1, mid=i + 1, v5=False) for i in range(50)
    ]
    data = b"".join(frames)
    for stock, fast in pair(mqtt.MQTTv311, manual_ack=True):
        cut = len(data) - 17  # the last packet arrives in two parts
        for part in (data[:cut], data[cut:]):
            stock.feed(part)
            fast.feed(part)
        assert [m[1] for m in fast.messages] == [f"r{i}".encode() * 40 for i in range(50)]
        assert fast.messages == stock.messages
        assert fast.client.fast_publishes == 49  # all but the one cut in two: paho's path waits for its end


def test_a_malformed_packet_is_paho_s_protocol_error_still() -> None:
    empty_topic = publish(b"", b"payload", qos=1, mid=3, v5=False)  # MQTT 3.1.1 forbids it
    for stock, fast in pair(mqtt.MQTTv311, manual_ack=True):
        stock.feed(empty_topic)
        fast.feed(empty_topic)
        assert stock.messages == fast.messages == []
        assert stock.codes[-1] == fast.codes[-1] == int(mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL)
        assert fast.client.fast_publishes == 0


def test_an_incoming_message_builds_its_info_only_when_asked() -> None:
    msg = IncomingMessage(42, b"iot/power/dev-1")
    assert isinstance(msg, mqtt.MQTTMessage)
    assert msg.topic == "iot/power/dev-1"
    info = msg.info
    assert isinstance(info, mqtt.MQTTMessageInfo)
    assert info.mid == 42
    assert msg.info is info


def test_a_closed_connection_is_lost_the_same_way() -> None:
    for stock, fast in pair(mqtt.MQTTv5, manual_ack=True):
        for reader in (stock, fast):
            reader.feed(publish(b"iot/power/dev-1", b"last", qos=1, mid=1))
            reader.there.close()  # the broker goes away
            rc = reader.client.loop_read()
            reader.codes.append(int(rc))
        assert fast.messages == stock.messages
        assert fast.codes[-1] == stock.codes[-1] == int(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)
        assert fast.client._sock is None and stock.client._sock is None


def test_mqtt5_properties_are_built_when_read_and_are_paho_s_empty_ones() -> None:
    got: list[mqtt.MQTTMessage] = []
    for _stock, fast in pair(mqtt.MQTTv5, manual_ack=True):
        fast.client.on_message = lambda c, u, msg: got.append(msg)
        fast.feed(publish(b"iot/power/dev-1", b"p", qos=1, mid=1))
        (msg,) = got
        props = msg.properties
        assert isinstance(props, Properties)
        assert props.packetType == PacketTypes.PUBLISH
        assert props.json() == {}
        assert msg.properties is props  # built once
