"""Device profiles at run time, through the real processes: a type created with ``PUT /api/profiles`` is
accepted by an already running gateway (no restart), and the unknown-type policy ``accept``."""

from __future__ import annotations

import time
import uuid

import httpx
import orjson
import pytest

from infra.ports import free_port
from iotp.schema import now_ms
from iotp.topics import mqtt_topic
from tests.dashboard_api.conftest import wait_api_ready
from tests.gateway.helpers import read_until, reading_ids
from tests.support.mqtt_publish import publish_payloads
from tests.support.processes import ProcessGroup
from tests.support.services import isolated
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SOIL = {
    "description": "soil probe",
    "expected_interval_s": 60,
    "metrics": {
        "moisture": {"unit": "%", "valid_min": 0, "valid_max": 100, "normal_min": 10, "normal_max": 60},
    },
}


def soil_reading(device_id: str, seq: int, moisture: float) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "device_id": device_id,
            "device_type": "soil",
            "seq": seq,
            "ts": now_ms(),
            "metrics": {"moisture": moisture},
        }
    )


def start_gateway(group: ProcessGroup, env: dict[str, str] | None = None):
    gw = group.start("gateway", "--client-id", f"gw-{uuid.uuid4().hex[:6]}", "--metrics-port", "0", env=env)
    wait_for(lambda: b"subscribed" in gw.log.read_bytes() or not gw.alive(), 60, message="gateway subscribed")
    assert gw.alive(), gw.output()
    return gw


def reasons(records) -> dict[str, str]:
    """mqtt payload seq -> dead-letter reason"""
    return {str(orjson.loads(r.value)["seq"]): dict(r.headers)["reason"].decode() for r in records}


@pytest.fixture
def live_settings(stack_settings, tmp_path):
    """Isolated names, an API port of its own, and a short profile poll."""
    return isolated(
        stack_settings, tmp_path / "state", api_port=free_port(), gateway_metrics_port=free_port(), profiles_poll_s=0.5
    )


async def test_type_created_through_the_api_is_accepted_by_a_running_gateway(live_settings, tmp_path):
    settings = live_settings
    group = ProcessGroup(settings, tmp_path / "logs")
    try:
        gw = start_gateway(group)
        api = group.start("api")
        wait_api_ready(settings, api)
        device = f"soil-{uuid.uuid4().hex[:6]}"
        topic = mqtt_topic(settings, "soil", device)

        # before: no profile -> dead letter, reason unknown_device_type (the default policy)
        publish_payloads(settings, [(topic, soil_reading(device, 1, 30.0))], qos=1)
        dlq = await read_until(settings, settings.topic_deadletter, lambda recs: len(recs) >= 1, 60)
        assert reasons(dlq) == {"1": "unknown_device_type"}

        headers = {"Authorization": f"Bearer {settings.api_token}"}
        resp = httpx.put(f"{settings.api_url}/api/profiles/soil", json=SOIL, headers=headers, timeout=20)
        assert resp.status_code == 201, resp.text

        # after: the running gateway picks the profile up (it polls); publish until one reading passes
        seq = 1
        deadline = time.monotonic() + 60
        accepted: set[str] = set()
        while not accepted and time.monotonic() < deadline:
            seq += 1
            publish_payloads(settings, [(topic, soil_reading(device, seq, 30.0))], qos=1)
            records = await read_until(settings, settings.topic_readings, lambda recs: bool(recs), 1.0)
            accepted = set(reading_ids(records))
        assert accepted, f"no soil reading accepted within 60 s; gateway log:\n{gw.output()[-3000:]}"
        assert gw.alive(), "the gateway was not restarted"

        # and the profile's valid range applies: 130 % is out of range
        publish_payloads(settings, [(topic, soil_reading(device, 1000, 130.0))], qos=1)
        dlq = await read_until(settings, settings.topic_deadletter, lambda recs: "1000" in reasons(recs), 60)
        assert reasons(dlq)["1000"] == "out_of_range"

        # every soil reading published after the first accepted one went through
        def has_last(recs) -> bool:  # reading ids are device:ts:seq
            return any(i.startswith(f"{device}:") and i.endswith(f":{seq}") for i in reading_ids(recs))

        last = await read_until(settings, settings.topic_readings, has_last, 30)
        assert has_last(last)
    finally:
        group.stop_all()


async def test_accept_policy_forwards_an_unknown_type(isolated_settings, processes):
    settings = isolated_settings
    start_gateway(processes, env={"IOTP_UNKNOWN_DEVICE_TYPE": "accept"})
    device = f"soil-{uuid.uuid4().hex[:6]}"
    publish_payloads(settings, [(mqtt_topic(settings, "soil", device), soil_reading(device, 1, 5000.0))], qos=1)
    records = await read_until(settings, settings.topic_readings, lambda recs: bool(recs), 60)
    [record] = records
    batch = orjson.loads(record.value)
    assert (batch["device_type"], batch["readings"][0]["metrics"]) == ("soil", {"moisture": 5000.0})
