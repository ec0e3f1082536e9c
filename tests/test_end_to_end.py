"""The whole pipeline with real services: MQTT -> gateway -> Kafka -> Faust -> Redis and
Kafka -> ClickHouse -> API, with a WebSocket client watching."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
import websockets

from tests.support.mqtt_publish import publish_readings, reading
from tests.support.waiting import async_wait_for, wait_api_ready

pytestmark = pytest.mark.integration

DEVICES = 5
PER_DEVICE = 10


@pytest.mark.parametrize("record_mode", ["device", "partition"])  # IOTP_KAFKA_RECORD_MODE
async def test_readings_flow_to_clickhouse_redis_and_websocket(isolated_settings, processes, record_mode):
    settings = isolated_settings.model_copy(update={"kafka_record_mode": record_mode})
    for name in ("gateway", "stream", "api"):
        processes.start(name, settings=settings)
    base = settings.api_url
    headers = {"Authorization": f"Bearer {settings.api_token}"}

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
        await wait_api_ready(http)

        tag = uuid.uuid4().hex[:6]
        device_ids = [f"e2e-{tag}-{i}" for i in range(DEVICES)]
        sent = [reading(d, seq, temperature=20.0 + seq) for d in device_ids for seq in range(1, PER_DEVICE + 1)]
        expected_ids = {f"{r['device_id']}:{r['ts']}:{r['seq']}" for r in sent}  # identity: device, ts, seq

        ws_url = base.replace("http", "ws") + "/ws?channels=readings"
        seen_on_ws: set[str] = set()
        async with websockets.connect(ws_url, additional_headers=headers) as ws:
            await asyncio.to_thread(publish_readings, settings, sent)

            async def all_on_ws():
                try:
                    while True:
                        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        for r in frame["data"]["readings"]:
                            seen_on_ws.add(r["id"])
                except TimeoutError:
                    pass
                return expected_ids <= seen_on_ws

            await async_wait_for(all_on_ws, timeout=90, message="all readings on the WebSocket")

        # Redis: the newest reading of each device is the latest state.
        for device_id in device_ids:

            async def latest_is_newest(device_id=device_id):
                resp = await http.get(f"/api/devices/{device_id}")
                return resp.status_code == 200 and resp.json()["seq"] == PER_DEVICE

            await async_wait_for(latest_is_newest, timeout=60, message=f"latest state of {device_id}")
            state = (await http.get(f"/api/devices/{device_id}")).json()
            assert state["metrics"]["temperature"] == 20.0 + PER_DEVICE

        # ClickHouse: exactly the readings sent, each once.
        for device_id in device_ids:

            async def stored(device_id=device_id):
                resp = await http.get(f"/api/devices/{device_id}/history", params={"metric": "temperature"})
                points = resp.json()["points"] if resp.status_code == 200 else []
                return points if len(points) >= PER_DEVICE else None

            points = await async_wait_for(stored, timeout=60, message=f"history of {device_id}")
            assert sorted(p["value"] for p in points) == [20.0 + s for s in range(1, PER_DEVICE + 1)]

        # The load test's exact accounting: every reading of the tagged fleet stored once, none missing.
        check = (await http.get("/api/pipeline/ingest-check", params={"device_prefix": f"e2e-{tag}-"})).json()
        assert (check["readings"], check["devices"], check["missing_in_sequence"]) == (DEVICES * PER_DEVICE, DEVICES, 0)
        assert check["duplicate_rows"] == 0
        assert 0 <= check["latency_ms"]["p50"] <= check["latency_ms"]["p99"] < 60_000

        bad = await http.get("/api/pipeline/ingest-check", params={"device_prefix": "x;DROP"})
        assert bad.status_code == 422
