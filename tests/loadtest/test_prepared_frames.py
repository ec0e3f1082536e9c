"""The lean publisher's prepared frames (pure logic): each frame is the PUBLISH that the live path would
send -- topic, packet id, the simulator's reading with its seq and metrics -- and only the ts is written
when it is sent. tests/loadtest/test_lean_publisher.py sends them through the real Mosquitto."""

from __future__ import annotations

import math

import orjson
import pytest

from iotp.settings import Settings
from loadtest.lean_publisher import LeanPublisher
from loadtest.prepared_frames import PreparedFrames
from simulator.fleet import build_fleet

START_MS = 1_764_633_600_000
SEND_MS = 1_764_633_700_123


def _fleet(n: int = 7):
    # the same seed and seq0 twice: one fleet prepares, its twin says what each reading must be
    return build_fleet(n, seed=5, mix={"power": 1.0, "climate": 1.0}, prefix="pf-", seq0=1000)


def _topics(devices):
    return [f"iotp/{d.device_type}/{d.device_id}".encode() for d in devices]


def _parse(data: bytes) -> list[tuple[bytes, int, dict | list]]:
    """PUBLISH QoS 1 frames -> (topic, packet id, payload), checking every remaining length."""
    out = []
    i = 0
    while i < len(data):
        assert data[i] == 0x32
        i += 1
        length = shift = 0
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = data[i : i + length]
        assert len(body) == length
        topic_len = int.from_bytes(body[:2], "big")
        topic = body[2 : 2 + topic_len]
        packet_id = int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")
        out.append((topic, packet_id, orjson.loads(body[4 + topic_len :])))
        i += length
    return out


def test_each_frame_is_the_live_publish_with_the_send_time_as_ts():
    devices, twins = _fleet(), _fleet()
    rate = 500.0
    frames = PreparedFrames(devices, _topics(devices), 30, msg_rate=rate, start_ms=START_MS)
    assert len(frames) == 30
    out = bytearray()
    frames.append_to(out, 0, 30, SEND_MS)
    parsed = _parse(bytes(out))
    assert len(parsed) == 30
    for i, (topic, packet_id, payload) in enumerate(parsed):
        twin = twins[i % len(twins)]
        expected = twin.reading_at(START_MS + int(i * 1000 / rate))
        expected["ts"] = SEND_MS
        assert topic == _topics(twins)[i % len(twins)]
        assert packet_id == i % 65535 + 1
        assert payload == expected


def test_a_range_from_the_middle_is_stamped_where_it_lands_in_the_buffer():
    devices = _fleet()
    frames = PreparedFrames(devices, _topics(devices), 20, msg_rate=100.0, start_ms=START_MS)
    out = bytearray(b"unsent bytes still queued")
    frames.append_to(out, 5, 12, SEND_MS)
    frames.append_to(out, 12, 12, SEND_MS + 1)  # an empty range adds nothing
    assert out.startswith(b"unsent bytes still queued")
    parsed = _parse(bytes(out[len(b"unsent bytes still queued") :]))
    assert [packet_id for _, packet_id, _ in parsed] == list(range(6, 13))
    assert {payload["ts"] for _, _, payload in parsed} == {SEND_MS}
    assert b"9999999999999" not in out
    # the prepared frames themselves keep their placeholders for the next caller
    assert bytes(frames.data).count(b'"ts":9999999999999') == 20


def test_batched_messages_stamp_each_reading_before_the_send_time_as_the_live_path_does():
    devices, twins = _fleet(4), _fleet(4)
    batch, msg_rate = 5, 30.0  # 4 devices, 150 readings/s: a device reads every 26.7 ms (not whole ms)
    frames = PreparedFrames(devices, _topics(devices), 8, msg_rate=msg_rate, start_ms=START_MS, batch=batch)
    out = bytearray()
    frames.append_to(out, 0, 8, SEND_MS)
    interval_ms = 1000.0 * len(devices) / (msg_rate * batch)
    for i, (_, _, payload) in enumerate(_parse(bytes(out))):
        assert isinstance(payload, list) and len(payload) == batch
        planned = START_MS + int(i * 1000 / msg_rate)
        twin = twins[i % len(twins)]
        for k, reading in enumerate(payload):
            lag = math.ceil((batch - 1 - k) * interval_ms)
            expected = twin.reading_at(planned - lag)
            # the live path: int(wall - (n - 1 - k) * interval_ms) for an integer wall clock
            assert reading["ts"] == SEND_MS - lag == int(SEND_MS - (batch - 1 - k) * interval_ms)
            expected["ts"] = reading["ts"]
            assert reading == expected


def test_a_send_time_that_is_not_13_digits_is_refused_not_written():
    devices = _fleet(2)
    frames = PreparedFrames(devices, _topics(devices), 2, msg_rate=10.0, start_ms=START_MS)
    with pytest.raises(ValueError, match="13 digits"):
        frames.append_to(bytearray(), 0, 2, 10**13)


def test_the_publisher_prepares_only_within_its_memory_budget():
    devices = _fleet(50)

    def publisher(**kw):
        return LeanPublisher(Settings(), devices, 10_000.0, client_id="budget", **kw)

    frames = publisher().prepared(2.0)
    assert frames is not None and len(frames) == 20_002  # int(2.0 * 10,000) + 2: the loop sends at most +1
    assert publisher(max_prepared_mb=1).prepared(2.0) is None
    assert publisher(prepare=False).prepared(2.0) is None
