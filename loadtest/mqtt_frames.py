"""The few MQTT 3.1.1 packets a publish-only load generator needs, framed by hand.

Why not paho: a paho ``publish()`` costs tens of microseconds of Python per message (message object,
packet queue, locks, its network loop), so at 10k messages/s a paho publisher takes a large share of a
core from the pipeline it is supposed to measure. A load generator only ever sends CONNECT, PUBLISH and
DISCONNECT and reads CONNACK and PUBACK, whose wire formats are fixed by the standard (OASIS MQTT 3.1.1,
sections 3.1-3.4 and 3.14), so they are framed here directly and written to the socket in bulk.
"""

from __future__ import annotations

import struct

CONNACK = 0x20
PUBACK = 0x40
DISCONNECT = b"\xe0\x00"
_CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttProtocolError(Exception):
    """The broker refused the connection or sent something a publisher does not expect."""


def remaining_length(n: int) -> bytes:
    """The variable-length 'remaining length' field (1-4 bytes, 7 bits each, continuation bit 0x80)."""
    if n < 0 or n > 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def connect_packet(
    client_id: str, username: str | None = None, password: str | None = None, keepalive: int = 0
) -> bytes:
    """CONNECT with a clean session (a load generator keeps no state at the broker)."""
    flags = 0x02
    payload = _string(client_id)
    if username:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int = 0) -> bytes:
    """PUBLISH (no DUP, no retain). ``topic`` already UTF-8; ``packet_id`` 1..65535 for QoS 1."""
    if qos:
        head = struct.pack("!H", len(topic)) + topic + struct.pack("!H", packet_id)
        return b"\x32" + remaining_length(len(head) + len(payload)) + head + payload
    head = struct.pack("!H", len(topic)) + topic
    return b"\x30" + remaining_length(len(head) + len(payload)) + head + payload


def check_connack(packet: bytes) -> None:
    """Raise :class:`MqttProtocolError` unless ``packet`` (4 bytes) is a successful CONNACK."""
    if len(packet) != 4 or packet[0] != CONNACK or packet[1] != 2:
        raise MqttProtocolError(f"expected CONNACK, got {packet!r}")
    if packet[3]:
        reason = _CONNACK_ERRORS.get(packet[3], f"return code {packet[3]}")
        raise MqttProtocolError(f"the broker refused the connection: {reason}")


class AckReader:
    """Counts PUBACKs in a byte stream that may split packets anywhere (a QoS 1 publisher reads nothing
    else after CONNACK; anything else is a protocol error)."""

    def __init__(self) -> None:
        self.acked = 0
        self._buffer = b""

    def feed(self, data: bytes) -> int:
        """Consume ``data``; return how many PUBACKs it completed."""
        buffer = self._buffer + data if self._buffer else data
        whole = len(buffer) - len(buffer) % 4
        # PUBACK is always exactly 4 bytes: 0x40 0x02 <packet id>. Check the fixed headers in one go.
        if buffer[0:whole:4].count(PUBACK) != whole // 4 or buffer[1:whole:4].count(2) != whole // 4:
            bad = next(i for i in range(0, whole, 4) if buffer[i] != PUBACK or buffer[i + 1] != 2)
            raise MqttProtocolError(f"expected PUBACK, got {buffer[bad : bad + 4]!r}")
        self._buffer = buffer[whole:]
        self.acked += whole // 4
        return whole // 4
