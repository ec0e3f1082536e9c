"""Partition-mode records (IOTP_KAFKA_RECORD_MODE=partition) through a real worker, broker and Redis: the
same readings as partition records and as device-keyed records give the same latest state, aggregates and
alerts (one worker per mode, each on its own topics), and the same aggregates on the Redis aggregates
channel, which partition mode publishes as batches (``AggregateBatch``, many aggregates per message)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import orjson
import pytest

from iotp.kafka import partition_for
from iotp.schema import channel_aggregates, encode_batch, encode_partition_batch
from iotp.settings import Settings
from iotp.topics import redis_names
from tests.stream_jobs.conftest import stream_test_settings
from tests.stream_jobs.support import Producer, TopicWatcher, device_hash, noise, now_ms, redis_client
from tests.support.processes import ProcessGroup
from tests.support.waiting import until

pytestmark = pytest.mark.integration
NO_SILENCE = dict(stream_silence_min_s=3600.0)  # silence depends on wall-clock timing: not compared here


@pytest.fixture(scope="module")
def mode_settings(stack_settings: Settings) -> dict[str, Settings]:
    return {
        "device": stream_test_settings(stack_settings, **NO_SILENCE),
        "partition": stream_test_settings(stack_settings, kafka_record_mode="partition", **NO_SILENCE),
    }


@pytest.fixture(scope="module")
def mode_workers(mode_settings, tmp_path_factory) -> Iterator[None]:
    groups = []
    for mode, settings in mode_settings.items():
        group = ProcessGroup(settings, tmp_path_factory.mktemp(f"stream-{mode}-logs"))
        group.start("stream")
        groups.append(group)
    yield
    for group in groups:
        group.stop_all()


def workload(tag: str, t0: int) -> list[dict[str, list[dict]]]:
    """8 'linger windows' of 10 readings (50 ms apart) for each of 10 devices; a humidity spike on one."""
    devices = [f"{tag}-{d}" for d in range(10)]
    values = {device: noise(80, seed=d) for d, device in enumerate(devices)}
    values[devices[0]][60:63] = [60.0, 61.0, 60.5]
    windows = []
    for w in range(8):
        window = {}
        for device in devices:
            window[device] = [
                {
                    "id": f"{device}:{i}",
                    "seq": i,
                    "ts": t0 + i * 50,
                    "rx": t0,
                    "metrics": {"humidity": values[device][i - 1]},
                }
                for i in range(w * 10 + 1, w * 10 + 11)
            ]
        windows.append(window)
    return windows


async def produce(settings: Settings, windows: list[dict[str, list[dict]]]) -> None:
    """All records in one produce request (as a backlog arrives), each in the mode of ``settings``."""
    async with Producer(settings) as p:
        futures = []
        for window in windows:
            if settings.kafka_record_mode == "device":
                for device, rows in window.items():
                    value = encode_batch(device, "climate", rows)
                    futures.append(await p.producer.send(settings.topic_readings, key=device.encode(), value=value))
                continue
            groups: dict[int, list[bytes]] = {}
            for device, rows in window.items():
                part = partition_for(device.encode(), settings.kafka_partitions)
                groups.setdefault(part, []).append(encode_batch(device, "climate", rows))
            for part, encoded in groups.items():
                value = encode_partition_batch(encoded)
                futures.append(await p.producer.send(settings.topic_readings, value=value, partition=part))
        await asyncio.gather(*futures)


async def collect_channel(settings: Settings, channel: str, into: list[bytes], ready: asyncio.Event) -> None:
    """Every message on a Redis pub/sub channel, until cancelled."""
    r = redis_client(settings)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    ready.set()
    try:
        while True:
            message = await pubsub.get_message(timeout=0.2)
            if message is not None:
                data = message["data"]
                into.append(data.encode() if isinstance(data, str) else data)
    finally:
        await pubsub.aclose()
        await r.aclose()


async def test_partition_records_give_the_same_state_aggregates_and_alerts(mode_settings, mode_workers) -> None:
    tag = f"pm{uuid.uuid4().hex[:6]}"
    published: dict[str, list[bytes]] = {mode: [] for mode in mode_settings}
    collectors = []
    for mode, settings in mode_settings.items():
        ready = asyncio.Event()
        channel = redis_names(settings).channel_aggregates
        collectors.append(asyncio.create_task(collect_channel(settings, channel, published[mode], ready)))
        await asyncio.wait_for(ready.wait(), 10)
    # readings a few seconds ahead: the wall clock closes a window 1 s after its end, so a worker slowed
    # down (shared cores) still applies every reading before its window closes, in both modes
    windows = workload(tag, now_ms() + 4000)
    devices = sorted(windows[0])
    results = {}
    watchers = {mode: TopicWatcher(s) for mode, s in mode_settings.items()}
    for w in watchers.values():
        await w.__aenter__()
    try:
        await asyncio.gather(*(produce(s, windows) for s in mode_settings.values()))
        for mode, settings in mode_settings.items():
            r = redis_client(settings)

            async def complete(r=r, settings=settings):
                seqs = [(await device_hash(r, settings, d)).get("seq") for d in devices]
                return seqs == ["80"] * len(devices)

            await until(complete, timeout=90, message=f"{mode}: every reading applied")
            watch = watchers[mode]

            def windows_closed(watch=watch):  # 4 s of data in 2 s windows: the last closes on the wall clock
                aggs = [a for d in devices for a in watch.aggregates(d)]
                return len(aggs) >= 3 * len(devices) and aggs

            await until(windows_closed, timeout=60, message=f"{mode}: windows closed")
            await asyncio.sleep(2.0)  # anything still to come
            hashes = {}
            for d in devices:
                h = await device_hash(r, settings, d)
                h.pop("last_seen")  # the wall time of the write
                hashes[d] = h
            results[mode] = {
                "state": hashes,
                "aggregates": sorted(
                    orjson.dumps(a, option=orjson.OPT_SORT_KEYS) for d in devices for a in watch.aggregates(d)
                ),
                "alerts": sorted((a["alert_id"], a["rule"], a["state"]) for d in devices for a in watch.alerts(d)),
            }
            await r.aclose()
        for mode in mode_settings:  # the aggregates channel: the same aggregates as the topic
            ours = [m for m in published[mode] if tag.encode() in m]
            on_channel = [a for m in ours for a in channel_aggregates(orjson.loads(m)) if a["device_id"] in devices]
            results[mode]["channel"] = sorted(orjson.dumps(a, option=orjson.OPT_SORT_KEYS) for a in on_channel)
            results[mode]["channel_messages"] = len(ours)
    finally:
        for task in collectors:
            task.cancel()
        await asyncio.gather(*collectors, return_exceptions=True)
        for w in watchers.values():
            await w.__aexit__(None, None, None)
    device, partition = results["device"], results["partition"]
    assert device["channel"] == device["aggregates"] and partition["channel"] == partition["aggregates"]
    assert device["channel_messages"] == len(device["aggregates"])  # device mode: one message per aggregate
    assert partition["channel_messages"] < len(partition["aggregates"]) / 2, partition["channel_messages"]
    assert device["state"] == partition["state"]
    assert device["aggregates"] == partition["aggregates"]
    assert device["alerts"] == partition["alerts"]
    assert any(rule == "zscore" for _, rule, _ in device["alerts"]), device["alerts"]
