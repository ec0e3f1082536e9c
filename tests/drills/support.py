"""Restart drills: a pipeline (gateway, stream worker, API with the embedded sink) as real subprocesses,
and the exact check that N new readings of fresh devices reached ClickHouse, Redis and a WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import websockets

from infra.stack import LocalStack
from iotp.settings import Settings
from tests.support.mqtt_publish import publish_readings, reading
from tests.support.processes import ProcessGroup
from tests.support.services import _with_accounts, isolated, make_test_settings
from tests.support.waiting import async_wait_for, wait_api_ready

COMPONENTS = ("gateway", "stream", "api")


@contextlib.contextmanager
def own_stack(tmp_path: Path, kafka_storage: str) -> Iterator[tuple[LocalStack, Settings]]:
    """A local stack of the drill's own (drills kill and restart its services) and the pipeline's settings
    on it: isolated names, the sink flushing every 0.3 s."""
    settings = make_test_settings(tmp_path / "state", kafka_storage=kafka_storage)
    stack = LocalStack(settings)
    stack.up()
    try:
        with_accounts = _with_accounts(settings, stack.mqtt_auth().ensure_services())
        yield stack, isolated(with_accounts, tmp_path / "pipeline", sink_batch_seconds=0.3)
    finally:
        stack.down()


@dataclass
class Pipeline:
    settings: Settings
    group: ProcessGroup
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.settings.api_token}"}

    def start(self) -> None:
        for name in COMPONENTS:
            self.group.start(name)

    def stop(self) -> None:
        self.group.stop_all()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in self.group.procs)

    async def wait_ready(self, timeout: float = 120) -> None:
        async with httpx.AsyncClient(base_url=self.settings.api_url, headers=self.headers, timeout=5) as http:
            await wait_api_ready(http, timeout)

    async def stats(self) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.settings.api_url, headers=self.headers, timeout=5) as http:
            body = (await http.get("/api/pipeline")).json()
        return {f"{s['stage']}.{k}": v for s in body["stages"] for k, v in s["counters"].items()}

    async def flow(self, tag: str, devices: int, per_device: int, timeout: float = 90) -> None:
        """Publish ``devices x per_device`` readings of fresh devices ``<tag>-<i>`` (temperature = 20 + seq / 100,
        PUBACK-confirmed) and wait until every one is on the WebSocket, current in Redis and stored once in
        ClickHouse; on a timeout, the assertion says which stage is short."""
        s = self.settings
        ids = [f"{tag}-{i}" for i in range(devices)]
        sent = [reading(d, seq, temperature=20.0 + seq / 100) for d in ids for seq in range(1, per_device + 1)]
        expected = {(r["device_id"], r["seq"]) for r in sent}
        seen: set[tuple[str, int]] = set()
        url = s.api_url.replace("http", "ws", 1) + "/ws?channels=readings"
        async with (
            websockets.connect(url, additional_headers=self.headers) as ws,
            httpx.AsyncClient(base_url=s.api_url, headers=self.headers, timeout=10) as http,
        ):
            await asyncio.to_thread(publish_readings, s, sent)

            async def on_websocket():
                try:
                    while True:
                        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 0.3))
                        data = frame.get("data") or {}
                        for r in data.get("readings", []):
                            seen.add((data.get("device_id"), r.get("seq")))
                except TimeoutError:
                    pass
                return expected <= seen

            async def current_in_redis():
                for d in ids:
                    resp = await http.get(f"/api/devices/{d}")
                    if resp.status_code != 200 or resp.json().get("seq") != per_device:
                        return False
                return True

            async def in_clickhouse():
                check = (await http.get("/api/pipeline/ingest-check", params={"device_prefix": f"{tag}-"})).json()
                return check if check["readings"] >= len(sent) else False

            try:
                await async_wait_for(on_websocket, timeout=timeout, message="all new readings on the WebSocket")
                await async_wait_for(current_in_redis, timeout=30, message="latest state of every new device")
                check = await async_wait_for(in_clickhouse, timeout=30, message="all new readings in ClickHouse")
            except AssertionError as exc:
                missing = len(expected - seen)
                raise AssertionError(
                    f"{exc}; {missing} of {len(expected)} not on the WebSocket; counters {await self.stats()}"
                ) from None
            assert (check["readings"], check["devices"], check["duplicate_rows"]) == (len(sent), devices, 0), check
            # exact by reading: every (device, seq) stored once, none other
            for d in ids:
                resp = await http.get(f"/api/devices/{d}/history", params={"metric": "temperature"})
                values = sorted(p["value"] for p in resp.json()["points"])
                assert values == [20.0 + q / 100 for q in range(1, per_device + 1)], (d, values)


def fresh_tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
