"""Publish readings or raw payloads to the test broker and wait for every PUBACK."""

from __future__ import annotations

import orjson

from iotp.mqtt import connect, make_client
from iotp.schema import now_ms
from iotp.settings import Settings
from iotp.topics import mqtt_topic


def reading(device_id: str, seq: int, device_type: str = "climate", ts_ms: int | None = None, **metrics: float) -> dict:
    return {
        "v": 1,
        "device_id": device_id,
        "device_type": device_type,
        "seq": seq,
        "ts": ts_ms if ts_ms is not None else now_ms(),
        "metrics": metrics or {"temperature": 20.0 + seq % 5, "humidity": 40.0, "co2": 500.0},
    }


def publish_payloads(settings: Settings, items: list[tuple[str, bytes]], qos: int = 1, timeout: float = 30.0) -> None:
    """Publish ``(topic, payload)`` pairs and block until the broker acknowledged all of them."""
    client = make_client(settings)
    connect(client, settings)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published(), "broker did not acknowledge a publish"
    finally:
        client.disconnect()
        client.loop_stop()


def publish_readings(settings: Settings, readings: list[dict], qos: int = 1) -> None:
    publish_payloads(
        settings, [(mqtt_topic(settings, r["device_type"], r["device_id"]), orjson.dumps(r)) for r in readings], qos=qos
    )
