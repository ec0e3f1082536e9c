"""iotp.paho_speedups: MQTT 5 PUBLISH properties decode exactly as with stock paho, instances do not share
property values, and the patch refuses another paho version (pure logic, no broker)."""

from __future__ import annotations

import struct

import paho.mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotp import paho_speedups
from iotp.paho_speedups import SharedTableProperties


def _publish(topic: bytes, payload: bytes, props: Properties | None) -> bytes:
    packed = props.pack() if props is not None else b"\x00"
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7) + packed + payload


def _props() -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 30
    props.ContentType = "application/json"
    props.UserProperty = [("site", "north"), ("line", "3")]
    props.CorrelationData = b"\x01\x02"
    return props


def _decode(packet: bytes, cls: type[Properties]) -> _packet.PublishPacket:
    saved = _packet.Properties
    _packet.Properties = cls
    try:
        return _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
    finally:
        _packet.Properties = saved


@pytest.mark.parametrize("props", [None, _props()])
def test_decoding_is_identical_to_stock_paho(props):
    packet = _publish(b"iotp/telemetry/climate/c-1", b'{"v":1}', props)
    stock, shared = _decode(packet, Properties), _decode(packet, SharedTableProperties)
    assert isinstance(shared.properties, SharedTableProperties)
    assert (shared.topic, shared.mid, shared.payload) == (stock.topic, stock.mid, stock.payload)
    assert shared.properties.json() == stock.properties.json()
    assert shared.properties.pack() == stock.properties.pack()


def test_instances_share_tables_but_not_values():
    first = _decode(_publish(b"t/a/b", b"x", _props()), SharedTableProperties).properties
    second = _decode(_publish(b"t/a/b", b"y", None), SharedTableProperties).properties
    assert first.names is second.names
    assert first.json()["ContentType"] == "application/json"
    assert second.json() == {}
    second.unpack(Properties(PacketTypes.PUBLISH).pack())  # clear() on a fresh decode keeps the tables
    assert second.names is first.names and second.json() == {}


def test_install_only_for_the_version_it_was_written_for(monkeypatch):
    monkeypatch.setattr(_packet, "Properties", Properties)
    monkeypatch.setattr(paho.mqtt, "__version__", "9.9.9")
    assert paho_speedups.install() is False
    assert _packet.Properties is Properties
    monkeypatch.setattr(paho.mqtt, "__version__", paho_speedups.PAHO_VERSION)
    assert paho_speedups.install() is True
    assert _packet.Properties is SharedTableProperties
