"""The hand-framed MQTT 3.1.1 packets of the lean load generator, against the standard's examples (pure
logic; tests/loadtest/test_lean_publisher.py checks them against the real broker and a paho subscriber)."""

from __future__ import annotations

import itertools

import pytest

from loadtest.mqtt_frames import (
    AckReader,
    MqttProtocolError,
    check_connack,
    connect_packet,
    publish_packet,
    remaining_length,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_matches_the_standards_table(n, encoded):
    assert remaining_length(n) == encoded


def test_remaining_length_out_of_range_is_refused():
    with pytest.raises(ValueError):
        remaining_length(268_435_456)


def test_publish_packet_layout():
    packet = publish_packet(b"a/b", b"xyz", qos=1, packet_id=0x0102)
    assert packet == b"\x32\x0a\x00\x03a/b\x01\x02xyz"
    assert publish_packet(b"a/b", b"xyz", qos=0) == b"\x30\x08\x00\x03a/bxyz"
    big = publish_packet(b"t", b"p" * 200, qos=1, packet_id=1)
    assert big[1:3] == remaining_length(2 + 1 + 2 + 200) and len(big) == 3 + 205


def test_connect_packet_flags():
    plain = connect_packet("cid")
    assert plain == b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x00\x00\x03cid"
    auth = connect_packet("cid", "user", "pw", keepalive=30)
    assert auth[9] == 0x80 | 0x40 | 0x02 and auth[10:12] == b"\x00\x1e"
    assert auth.endswith(b"\x00\x04user\x00\x02pw")


def test_connack_refusals_are_explained():
    check_connack(b"\x20\x02\x00\x00")
    with pytest.raises(MqttProtocolError, match="bad user name or password"):
        check_connack(b"\x20\x02\x00\x04")
    with pytest.raises(MqttProtocolError, match="not authorized"):
        check_connack(b"\x20\x02\x00\x05")
    with pytest.raises(MqttProtocolError, match="expected CONNACK"):
        check_connack(b"\x30\x02\x00\x00")


def test_ack_reader_counts_pubacks_split_anywhere():
    stream = b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in range(1, 1001))
    reader = AckReader()
    cuts = [0, 1, 2, 3, 7, 100, 101, 2001, 3999, 4000]
    for a, b in itertools.pairwise(cuts):
        reader.feed(stream[a:b])
    assert reader.acked == 1000


def test_ack_reader_refuses_anything_but_puback():
    reader = AckReader()
    reader.feed(b"\x40\x02\x00\x01")
    with pytest.raises(MqttProtocolError, match="expected PUBACK"):
        reader.feed(b"\x40\x02\x00\x02\xd0\x00\x00\x00")
