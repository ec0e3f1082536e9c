"""The live hub on partition-mode messages (IOTP_KAFKA_RECORD_MODE=partition): one message on the readings
channel carries many device batches (on the aggregates channel, many aggregates); each WebSocket subscriber
still gets one frame per device batch (per aggregate), for the devices it asked for. Pure logic, no
services."""

from __future__ import annotations

import orjson

from dashboard_api.hub import Hub
from iotp.schema import encode_aggregate_batch, encode_batch, encode_partition_batch


def _batch(device_id: str, seq: int) -> bytes:
    r = {"id": f"{device_id}:{seq}", "seq": seq, "ts": 1000 + seq, "rx": 1000, "metrics": {"t": 1.0}}
    return encode_batch(device_id, "climate", [r])


def _frames(sub) -> list[dict]:
    return [orjson.loads(frame) for _key, frame in sub._queue]


def test_a_partition_message_becomes_one_frame_per_device_batch() -> None:
    hub = Hub(None, {"readings": "p:readings"})
    everyone = hub.add(["readings"])
    only_b = hub.add(["readings"], ["b"])
    batches = [_batch("a", 1), _batch("b", 2), _batch("c", 3)]
    hub.dispatch("readings", encode_partition_batch(batches))
    assert [f["data"] for f in _frames(everyone)] == [orjson.loads(b) for b in batches]
    assert [f["channel"] for f in _frames(everyone)] == ["readings"] * 3
    assert [f["data"]["device_id"] for f in _frames(only_b)] == ["b"]
    hub.dispatch("readings", batches[0])  # a device-mode message: as before
    assert _frames(everyone)[-1]["data"] == orjson.loads(batches[0])


def _aggregate(device_id: str, metric: str) -> bytes:
    return orjson.dumps({"v": 1, "device_id": device_id, "device_type": "climate", "metric": metric, "window_s": 10})


def test_an_aggregate_batch_becomes_one_frame_per_aggregate() -> None:
    hub = Hub(None, {"aggregates": "p:aggregates"})
    everyone = hub.add(["aggregates"])
    only_b = hub.add(["aggregates"], ["b"])
    aggregates = [_aggregate("a", "t"), _aggregate("b", "t"), _aggregate("b", "h")]
    hub.dispatch("aggregates", encode_aggregate_batch(aggregates))
    assert [f["data"] for f in _frames(everyone)] == [orjson.loads(a) for a in aggregates]
    assert [f["channel"] for f in _frames(everyone)] == ["aggregates"] * 3
    assert [(f["data"]["device_id"], f["data"]["metric"]) for f in _frames(only_b)] == [("b", "t"), ("b", "h")]
    hub.dispatch("aggregates", aggregates[0])  # one aggregate per message (device mode): as before
    assert _frames(everyone)[-1]["data"] == orjson.loads(aggregates[0])
