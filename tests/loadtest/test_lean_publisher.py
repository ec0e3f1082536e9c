"""The lean load generator against the real Mosquitto of the test stack: every message it counts as
acknowledged reaches a subscriber, on the device's own topic, as a payload the gateway accepts, in each
device's seq order; and a refused login is an error, not a silent zero."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest

from gateway.validation import topic_device_id, validate_payload
from iotp.mqtt import connect, make_client
from iotp.schema import now_ms
from iotp.settings import Settings
from loadtest.lean_publisher import LeanPublisher, run_lean
from loadtest.mqtt_frames import MqttProtocolError
from simulator.scenario import Scenario
from tests.support.services import as_role
from tests.support.waiting import wait_for


class Collector:
    """A plain (non-shared) QoS 1 subscriber to the test's topic prefix."""

    def __init__(self, settings: Settings) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = make_client(as_role(settings, "gateway"))
        self.client.on_connect = lambda c, *_: c.subscribe(f"{settings.mqtt_topic_prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        connect(self.client, settings)
        self.client.loop_start()
        assert subscribed.wait(10), "subscriber did not get SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _scenario(rate: float, batch: int, devices: int = 40) -> Scenario:
    prefix = f"lean{uuid.uuid4().hex[:4]}-"
    return Scenario(
        fleet={"devices": devices, "mix": {"power": 0.5, "climate": 0.5}, "id_prefix": prefix},
        rate_per_s=rate,
        duration_s=1.5,
        qos=1,
        batch=batch,
    )


@pytest.mark.parametrize(("batch", "prepare"), [(1, True), (5, True), (1, False), (5, False)])
def test_every_acknowledged_message_arrives_valid_and_in_order(isolated_settings, batch, prepare):
    collector = Collector(isolated_settings)
    try:
        scenario = _scenario(rate=2000, batch=batch)
        before_ms = now_ms()
        stats = run_lean(isolated_settings, scenario, workers=1, prepare=prepare)
        after_ms = now_ms()
        assert (stats.prepare_s > 0) == prepare
        assert stats.unconfirmed_messages == 0
        assert stats.messages >= 0.9 * 1.5 * 2000 / batch  # it kept (about) to the schedule
        assert stats.confirmed == stats.messages * batch
        wait_for(lambda: collector.count() >= stats.messages, timeout=15, message="all messages at the subscriber")
        assert collector.count() == stats.messages
        seqs: dict[str, list[int]] = defaultdict(list)
        for topic, payload in collector.messages:
            readings = validate_payload(payload, now_ms(), topic_device=topic_device_id(topic))
            assert len(readings) == batch
            for r in readings:
                seqs[r.device_id].append(r.seq)
                # stamped when sent (a batch's first reading up to (batch - 1) x 20 ms earlier), never when made
                assert before_ms + 1000 * stats.prepare_s - 100 <= r.ts <= after_ms
        assert len(seqs) == 40
        assert all(s == sorted(s) and len(set(s)) == len(s) for s in seqs.values())
    finally:
        collector.close()


def test_workers_split_the_fleet_and_the_rate(isolated_settings):
    collector = Collector(isolated_settings)
    try:
        stats = run_lean(isolated_settings, _scenario(rate=1500, batch=1), workers=2)
        assert stats.workers == 2 and stats.unconfirmed_messages == 0
        wait_for(lambda: collector.count() >= stats.messages, timeout=15, message="all messages at the subscriber")
        devices = {topic_device_id(topic) for topic, _ in collector.messages}
        assert len(devices) == 40 and collector.count() == stats.messages
    finally:
        collector.close()


def test_a_refused_login_is_an_error(isolated_settings):
    wrong = isolated_settings.model_copy(update={"mqtt_username": "nobody", "mqtt_password": "wrong"})
    devices = _scenario(rate=100, batch=1).build_fleet()
    with pytest.raises(MqttProtocolError, match="refused"):
        LeanPublisher(wrong, devices, 100, client_id="lean-refused").run(0.5)
