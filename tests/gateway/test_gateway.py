"""The gateway as a real process between Mosquitto and the Kafka-wire broker."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis

from infra.ports import free_port, port_open, wait_port
from infra.stack import LocalStack
from iotp.schema import now_ms
from iotp.topics import mqtt_topic, redis_names
from tests.gateway.cases import CASES, good
from tests.gateway.helpers import PacedPublisher, metric_value, read_until, reading_ids
from tests.support.mqtt_publish import publish_payloads
from tests.support.processes import ProcessGroup
from tests.support.services import docker_available, isolated
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _readings(settings, devices: int, per_device: int, tag: str) -> tuple[list[tuple[str, bytes]], set[str]]:
    now = now_ms()
    items, ids = [], set()
    for seq in range(1, per_device + 1):
        for d in range(devices):
            device_id = f"{tag}-{d:03d}"
            items.append((mqtt_topic(settings, "climate", device_id), orjson.dumps(good(device_id, now, seq=seq))))
            ids.add(f"{device_id}:{now}:{seq}")
    return items, ids


def _start_gateway(processes, name: str, metrics_port: int = 0, env: dict[str, str] | None = None):
    """Start a gateway and wait until it subscribed (a shared subscription only receives from then on)."""
    gw = processes.start("gateway", "--client-id", name, "--metrics-port", str(metrics_port), env=env)
    wait_for(lambda: b"subscribed" in gw.log.read_bytes() or not gw.alive(), 60, message="gateway subscribed")
    assert gw.alive(), gw.output()
    return gw


async def test_malformed_payloads_dead_lettered_while_good_flow(isolated_settings, processes):
    settings = isolated_settings
    port = free_port()
    _start_gateway(processes, f"gw-{uuid.uuid4().hex[:6]}", port)
    tag = uuid.uuid4().hex[:6]
    now = now_ms()
    bad: dict[str, tuple[bytes, str]] = {}
    items: list[tuple[str, bytes]] = []
    good_items, good_ids = _readings(settings, 5, 20, f"ok{tag}")
    for i, (_name, build, reason) in enumerate(CASES):
        device_id = f"bad{tag}-{i:02d}"
        topic = mqtt_topic(settings, "climate", device_id)
        payload = build(device_id, now)
        bad[topic] = (payload, reason)
        items.append((topic, payload))
        items.extend(good_items[i * 4 : (i + 1) * 4])  # good readings interleaved with the bad ones
    items.extend(good_items[len(CASES) * 4 :])
    publish_payloads(settings, items, qos=1)

    dlq = await read_until(settings, settings.topic_deadletter, lambda recs: len(recs) >= len(CASES), 60)
    by_topic = {dict(r.headers)["mqtt_topic"].decode(): r for r in dlq}
    assert set(by_topic) == set(bad), "every bad payload, and nothing else, is dead-lettered"
    for topic, (payload, reason) in bad.items():
        rec = by_topic[topic]
        headers = dict(rec.headers)
        assert headers["reason"].decode() == reason, (topic, headers)
        assert rec.value == payload, "the original bytes are kept"
        assert headers["detail"]

    readings = await read_until(settings, settings.topic_readings, lambda recs: good_ids <= set(reading_ids(recs)), 60)
    assert set(reading_ids(readings)) == good_ids

    assert metric_value(port, "iotp_gateway_messages_rejected_total") == len(CASES)
    assert metric_value(port, "iotp_gateway_readings_forwarded_total") == len(good_ids)
    r = redis.Redis.from_url(settings.redis_url)
    key = redis_names(settings).stats_key
    wait_for(lambda: int(r.hget(key, "gateway.forwarded") or 0) == len(good_ids), 15, message="redis stats")
    stats = {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
    assert int(stats["gateway.rejected"]) == len(CASES)
    assert int(stats["gateway.received"]) == len(CASES) + len(good_ids)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_kill_9_mid_stream_loses_nothing(isolated_settings, processes, protocol):
    """Both MQTT versions of the gateway's subscription keep a persistent session: what the killed gateway
    had not acked is redelivered to its successor."""
    settings = isolated_settings
    name = f"gw-{uuid.uuid4().hex[:6]}"
    env = {"IOTP_GATEWAY_MQTT_PROTOCOL": protocol}
    gw = _start_gateway(processes, name, env=env)
    assert f"MQTT {protocol} connected".encode() in gw.log.read_bytes()
    items, ids = _readings(settings, 20, 150, f"k{uuid.uuid4().hex[:6]}")  # 3000 readings
    publisher = PacedPublisher(settings, items, rate=600)
    publisher.start()
    wait_for(lambda: publisher.published >= 1000, 30, message="publishing under way")
    gw.kill9()
    wait_for(lambda: publisher.published >= 1500, 30, message="publishing while the gateway is dead")
    gw2 = _start_gateway(processes, name, env=env)
    assert b"took the client id lease" in gw2.log.read_bytes()  # at once: the killed holder's pid is gone
    publisher.join(60)
    assert publisher.error is None, publisher.error
    records = await read_until(settings, settings.topic_readings, lambda recs: ids <= set(reading_ids(recs)), 90)
    got = reading_ids(records)
    assert ids - set(got) == set(), f"lost {len(ids - set(got))} readings"
    assert gw2.alive()
    print(f"{len(got) - len(set(got))} duplicates after kill -9")


async def test_two_gateways_share_the_load(isolated_settings, processes):
    settings = isolated_settings
    ports = [free_port(), free_port()]
    gws = [_start_gateway(processes, f"gw-{uuid.uuid4().hex[:6]}-{i}", ports[i]) for i in range(2)]
    assert all(gw.alive() for gw in gws)
    items, ids = _readings(settings, 40, 100, f"s{uuid.uuid4().hex[:6]}")  # 4000 readings
    publish_payloads(settings, items, qos=1)
    records = await read_until(settings, settings.topic_readings, lambda recs: ids <= set(reading_ids(recs)), 60)
    assert set(reading_ids(records)) == ids
    received = [metric_value(p, "iotp_gateway_messages_received_total") for p in ports]
    assert sum(received) >= len(ids)
    assert min(received) >= 0.2 * len(ids), f"load not shared: {received}"


@pytest.mark.skipif(docker_available(), reason="restarts the native broker of the local stack")
async def test_broker_restart_keeps_accepted_readings_queued_for_the_gateway(
    isolated_settings, processes, stack_settings
):
    """Readings the broker acknowledged while no gateway was connected survive a Mosquitto restart: the
    persistent session and its queue are saved (persistence on) and delivered when the gateway returns."""
    settings = isolated_settings
    name = f"gw-{uuid.uuid4().hex[:6]}"
    _start_gateway(processes, name).kill9()  # its persistent session keeps the subscription
    items, ids = _readings(settings, 10, 50, f"r{uuid.uuid4().hex[:6]}")  # 500 readings
    publish_payloads(settings, items, qos=1)  # every one PUBACKed: accepted, queued for the gateway

    stack = LocalStack(stack_settings)
    mosquitto = next(e for e in stack.endpoints() if e.name == "mosquitto")
    stack.supervisor.stop("mosquitto")
    assert not port_open(mosquitto.host, mosquitto.port)
    stack.supervisor.start("mosquitto")
    wait_port(mosquitto.host, mosquitto.port, 30, "mosquitto")

    _start_gateway(processes, name)
    records = await read_until(settings, settings.topic_readings, lambda recs: ids <= set(reading_ids(recs)), 60)
    assert ids - set(reading_ids(records)) == set(), "readings accepted before the restart were lost"


@pytest.fixture
def partition_settings(stack_settings, tmp_path):
    return isolated(stack_settings, tmp_path / "state", kafka_record_mode="partition")


async def test_partition_mode_forwards_every_reading_once_in_device_order(partition_settings, tmp_path):
    """IOTP_KAFKA_RECORD_MODE=partition: keyless records, each carrying the device batches of many devices,
    every device in the partition Kafka's default partitioner gives its id (checked by reading_ids), every
    reading exactly once, each device's readings in order along its partition."""
    settings = partition_settings
    group = ProcessGroup(settings, tmp_path / "logs")
    try:
        gw = group.start("gateway", "--client-id", f"gw-{uuid.uuid4().hex[:6]}", "--metrics-port", "0")
        wait_for(lambda: b"subscribed" in gw.log.read_bytes() or not gw.alive(), 60, message="gateway subscribed")
        assert gw.alive(), gw.output()
        items, ids = _readings(settings, 40, 50, f"p{uuid.uuid4().hex[:6]}")  # 2000 readings
        publish_payloads(settings, items, qos=1)
        records = await read_until(settings, settings.topic_readings, lambda recs: ids <= set(reading_ids(recs)), 60)
        got = reading_ids(records)
        assert sorted(got) == sorted(ids), "every reading exactly once"
        assert all(r.key is None for r in records)
        assert max(len(orjson.loads(r.value)["batches"]) for r in records) > 1
        seqs: dict[str, list[int]] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            for batch in orjson.loads(rec.value)["batches"]:
                seqs.setdefault(batch["device_id"], []).extend(r["seq"] for r in batch["readings"])
        assert all(s == sorted(s) for s in seqs.values()), "per-device order"
    finally:
        group.stop_all()


def test_a_second_gateway_with_the_same_client_id_exits_and_the_first_keeps_its_session(isolated_settings, processes):
    """Two gateways with one client id would take the persistent MQTT session from each other in a loop
    (Mosquitto 2.0.11 sends no "session taken over" reason code): the second finds the first's lease on the
    client id, exits with code 3 and says why, and the first keeps forwarding without a reconnect."""
    name = f"gw-{uuid.uuid4().hex[:6]}"
    first = _start_gateway(processes, name)
    second = processes.start("gateway", "--client-id", name, "--metrics-port", "0")
    wait_for(lambda: not second.alive(), 30, message="the second gateway exits")
    assert second.popen.returncode == 3, second.output()
    assert "is running with MQTT client id" in second.output()
    items, ids = _readings(isolated_settings, 5, 4, f"l{uuid.uuid4().hex[:6]}")
    publish_payloads(isolated_settings, items, qos=1)
    records = asyncio.run(
        read_until(isolated_settings, isolated_settings.topic_readings, lambda recs: ids <= set(reading_ids(recs)), 30)
    )
    assert ids <= set(reading_ids(records))
    assert first.alive() and "MQTT disconnected" not in first.output()
