"""``iotp simulate`` against the real MQTT broker: achieved rate, batching, malformed payloads, truth."""

from __future__ import annotations

import threading

import orjson
import pytest

from iotp.mqtt import connect, make_client
from tests.support.services import as_role
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


class Collector:
    """Subscribes to every topic under the prefix (QoS 1) and keeps the payloads."""

    def __init__(self, settings) -> None:
        self.payloads: list[bytes] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        settings = as_role(settings, "gateway")  # reading every device topic is the gateway's right
        self.client = make_client(settings)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{settings.mqtt_topic_prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        connect(self.client, settings)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.payloads.append(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("rate", [50, 200, 1000])
def test_rate_accuracy(isolated_settings, processes, tmp_path, rate):
    collector = Collector(isolated_settings)
    stats_file = tmp_path / "stats.json"
    try:
        proc = processes.start(
            "simulate",
            "--devices",
            "20",
            "--rate",
            str(rate),
            "--duration",
            "4",
            "--qos",
            "1",
            "--seed",
            "1",
            "--quiet",
            "--stats-json",
            str(stats_file),
        )
        assert proc.popen.wait(60) == 0, proc.output()
        stats = orjson.loads(stats_file.read_bytes())
        wait_for(lambda: len(collector.payloads) >= stats["messages"], timeout=20, message="all messages")
    finally:
        collector.close()
    readings = [orjson.loads(p) for p in collector.payloads]
    assert len(readings) == stats["readings"] == stats["published"]
    assert abs(stats["achieved_rate"] - rate) / rate < 0.02, stats
    # measured from what arrived: readings over the span of their sensor timestamps
    ts = sorted(r["ts"] for r in readings)
    measured = (len(ts) - 1) / ((ts[-1] - ts[0]) / 1000)
    assert abs(measured - rate) / rate < 0.02, (measured, rate)
    assert abs(len(readings) - 4 * rate) / (4 * rate) < 0.02


def test_batches_malformed_and_truth(isolated_settings, processes, tmp_path):
    collector = Collector(isolated_settings)
    truth_file = tmp_path / "truth.jsonl"
    stats_file = tmp_path / "stats.json"
    try:
        proc = processes.start(
            "simulate",
            "--devices",
            "10",
            "--rate",
            "400",
            "--count",
            "2000",
            "--batch",
            "5",
            "--workers",
            "2",
            "--malformed-fraction",
            "0.1",
            "--anomaly-rate",
            "400",
            "--truth-file",
            str(truth_file),
            "--seed",
            "9",
            "--qos",
            "1",
            "--quiet",
            "--stats-json",
            str(stats_file),
        )
        assert proc.popen.wait(90) == 0, proc.output()
        stats = orjson.loads(stats_file.read_bytes())
        wait_for(lambda: len(collector.payloads) >= stats["messages"], timeout=20, message="all messages")
    finally:
        collector.close()
    assert stats["workers"] == 2 and stats["readings"] == 2000
    good, bad = 0, 0
    for payload in collector.payloads:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, list) and obj and all(isinstance(r, dict) and "metrics" in r for r in obj):
            assert len({r["device_id"] for r in obj}) == 1
            good += len(obj)
    assert stats["malformed"] > 0 and bad > 0
    assert good >= stats["published"] - 5 * stats["malformed"]
    truth = [orjson.loads(line) for line in truth_file.read_bytes().splitlines()]
    assert truth and len(truth) == stats["anomalies"]
    assert all(set(t) == {"device_id", "device_type", "metric", "kind", "start_ms", "end_ms", "params"} for t in truth)
