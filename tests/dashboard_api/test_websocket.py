"""WebSocket push against a real API process fed by the real Redis pub/sub channels."""

from __future__ import annotations

import asyncio
import socket
import uuid

import httpx
import orjson
import pytest
import websockets

from tests.dashboard_api.conftest import make_alert, open_alert, seed_device
from tests.support.waiting import async_wait_for

pytestmark = pytest.mark.integration


def ws_url(api, query: str) -> str:
    return api.api_url.replace("http", "ws") + f"/ws?{query}"


def auth(api) -> dict[str, str]:
    """The token goes in the handshake's header (a query-string token is not accepted)."""
    return {"Authorization": f"Bearer {api.api_token}"}


def batch(device_id: str, seq: int, pad_metrics: int = 1) -> bytes:
    metrics = {f"m{i}": float(seq) for i in range(pad_metrics)}
    readings = [{"id": f"{device_id}:{seq}", "seq": seq, "ts": 1_700_000_000_000 + seq, "rx": 0, "metrics": metrics}]
    return orjson.dumps({"v": 1, "device_id": device_id, "device_type": "climate", "readings": readings})


async def publish(rds, channel: str, payloads: list[bytes]) -> None:
    def run():
        with rds.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(channel, payload)
            pipe.execute()

    await asyncio.to_thread(run)


async def recv_frames(ws, until, timeout: float = 20) -> list[dict]:
    """Read frames until ``until(frames)`` holds."""
    frames: list[dict] = []

    async def done():
        try:
            while not until(frames):
                frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 0.5)))
        except TimeoutError:
            pass
        return until(frames)

    await async_wait_for(done, timeout=timeout, message="frames")
    return frames


def client_stats(api, label: str) -> dict:
    body = httpx.get(api.api_url + "/api/pipeline", headers={"X-API-Token": api.api_token}).json()
    return next(c for c in body["websocket"]["per_client"] if c["label"] == label)


async def test_device_filter_and_subscribe_messages(api, rds, names):
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"wa-{tag}", f"wb-{tag}", f"wc-{tag}"
    async with websockets.connect(ws_url(api, f"channels=readings&devices={a}"), additional_headers=auth(api)) as ws:
        await publish(rds, names.channel_readings, [batch(b, 1), batch(a, 1), batch(c, 1), batch(a, 2)])
        frames = await recv_frames(ws, lambda f: len(f) >= 2)
        assert [(f["data"]["device_id"], f["data"]["readings"][0]["seq"]) for f in frames] == [(a, 1), (a, 2)]

        await ws.send(orjson.dumps({"op": "subscribe", "devices": [c], "channels": ["alerts"]}).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply == {"channel": "subscribed", "data": {"channels": ["alerts", "readings"], "devices": [a, c]}}
        alert = make_alert(c)
        await publish(rds, names.channel_readings, [batch(b, 2), batch(c, 2)])
        open_alert(rds, names, alert)
        frames = await recv_frames(ws, lambda f: len(f) >= 2)
        assert frames[0]["channel"] == "readings" and frames[0]["data"]["device_id"] == c
        assert frames[1] == {"channel": "alerts", "data": alert}

        await ws.send('{"op": "ping"}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["channel"] == "pong"
        await ws.send('{"op": "subscribe", "channels": ["nope"]}')
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["channel"] == "error" and "nope" in error["data"]["detail"]
        await ws.send("not json")
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["channel"] == "error"


async def test_fleet_pipeline_and_heartbeat_channels(api, rds, names):
    seed_device(rds, names, f"fl-{uuid.uuid4().hex[:6]}")
    async with websockets.connect(ws_url(api, "channels=fleet,pipeline,heartbeat"), additional_headers=auth(api)) as ws:
        frames = await recv_frames(ws, lambda f: {"fleet", "pipeline", "heartbeat"} <= {x["channel"] for x in f})
    by = {f["channel"]: f["data"] for f in frames}
    assert by["fleet"]["total"] >= 1 and "by_type" in by["fleet"]
    assert [s["stage"] for s in by["pipeline"]["stages"]][:3] == ["gateway", "stream", "sink"]
    assert by["heartbeat"]["dropped"] == 0


async def test_slow_client_does_not_hold_up_others_and_drops_are_counted(api, rds, names):
    """A client that stops reading: its queue stays bounded (oldest frames dropped, counted), then
    coalesces to the latest value per device; another client meanwhile gets every frame, in order."""
    tag = uuid.uuid4().hex[:6]
    total, chunk = 3000, 100
    # a small kernel receive buffer, so the server's socket fills soon after the client stops reading
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((api.api_host, api.api_port))
    slow = await websockets.connect(
        ws_url(api, "channels=readings&client=slow-" + tag),
        sock=sock,
        compression=None,
        max_queue=1,
        additional_headers=auth(api),
    )
    fast = await websockets.connect(ws_url(api, "channels=readings&client=fast-" + tag), additional_headers=auth(api))
    try:
        received: list[tuple[str, int]] = []

        async def read_fast():
            async for raw in fast:
                data = orjson.loads(raw)["data"]
                received.append((data["device_id"], data["readings"][0]["seq"]))

        reader = asyncio.create_task(read_fast())
        # ~2.5 kB frames, each for a different device: nothing to coalesce, so the slow queue must drop
        sent = [(f"sl-{tag}-{i}", i) for i in range(total)]
        for start in range(0, total, chunk):
            part = sent[start : start + chunk]
            await publish(rds, names.channel_readings, [batch(d, s, pad_metrics=150) for d, s in part])
            await async_wait_for(
                lambda n=start + len(part): _ready(len(received) >= n), timeout=30, message="fast client keeps up"
            )
        assert received == sent  # every frame, in order, while the other client reads nothing

        slow_stats = client_stats(api, "slow-" + tag)
        fast_stats = client_stats(api, "fast-" + tag)
        assert fast_stats["dropped"] == 0 and fast_stats["coalesced"] == 0 and fast_stats["sent"] == total
        assert slow_stats["dropped"] > 0, slow_stats
        assert slow_stats["pending"] <= 200  # IOTP_API_WS_QUEUE of the test API
        accounted = slow_stats["sent"] + slow_stats["pending"] + slow_stats["dropped"]
        assert total - 1 <= accounted <= total  # one frame may be in the sender's hands

        # now one busy device: the slow client's pending frame for it is replaced by each newer value
        hot = f"hot-{tag}"
        for start in range(1, 301, 30):  # in steps smaller than the coalescing threshold of a fast client
            await publish(rds, names.channel_readings, [batch(hot, s) for s in range(start, start + 30)])
            await async_wait_for(
                lambda n=total + start + 29: _ready(len(received) >= n),
                timeout=30,
                message="fast client gets the hot device",
            )
        assert [s for d, s in received[total:]] == list(range(1, 301))
        slow_stats = client_stats(api, "slow-" + tag)
        assert slow_stats["coalesced"] >= 299, slow_stats

        # the slow client finally reads: it gets the latest value of the hot device, once or twice at most
        hot_seqs: list[int] = []

        async def drained():
            try:
                while True:
                    data = orjson.loads(await asyncio.wait_for(slow.recv(), 1.0))["data"]
                    if data["device_id"] == hot:
                        hot_seqs.append(data["readings"][0]["seq"])
            except TimeoutError:
                return bool(hot_seqs)

        await async_wait_for(drained, timeout=60, message="slow client drained")
        assert hot_seqs[-1] == 300 and len(hot_seqs) <= 2, hot_seqs
        reader.cancel()
    finally:
        await slow.close()
        await fast.close()


async def _ready(value: bool) -> bool:
    return value
