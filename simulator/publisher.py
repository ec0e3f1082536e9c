"""Publish fleet readings over MQTT at a target total rate, reporting achieved vs target."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from iotp.mqtt import connect, make_client
from iotp.settings import Settings
from iotp.topics import mqtt_topic
from simulator.fleet import Device


@dataclass
class PublishStats:
    sent: int = 0
    errors: int = 0
    started: float = 0.0
    elapsed: float = 0.0

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


def run_publisher(settings: Settings, devices: list[Device], rate: float, *, qos: int = 0,
                  duration: float | None = None, count: int | None = None,
                  on_tick: Callable[[PublishStats], None] | None = None) -> PublishStats:
    """Round-robin over the fleet, pacing to ``rate`` messages/s, until duration or count is reached."""
    client = make_client(settings)
    connect(client, settings)
    client.loop_start()
    stats = PublishStats(started=time.monotonic())
    topics = {d.device_id: mqtt_topic(settings, d.device_type, d.device_id) for d in devices}
    interval = 1.0 / rate
    next_at = stats.started
    last_tick = stats.started
    i = 0
    try:
        while True:
            now = time.monotonic()
            stats.elapsed = now - stats.started
            if (duration is not None and stats.elapsed >= duration) or (count is not None and
                                                                         stats.sent >= count):
                break
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            device = devices[i % len(devices)]
            i += 1
            payload = orjson.dumps(device.next_reading(time.time()))
            info = client.publish(topics[device.device_id], payload, qos=qos)
            if info.rc == 0:
                stats.sent += 1
            else:
                stats.errors += 1
            next_at += interval
            if on_tick and now - last_tick >= 1.0:
                last_tick = now
                on_tick(stats)
    finally:
        if qos:
            deadline = time.monotonic() + 10
            while client._out_messages and time.monotonic() < deadline:  # wait for PUBACKs
                time.sleep(0.01)
        client.disconnect()
        client.loop_stop()
    stats.elapsed = time.monotonic() - stats.started
    return stats
