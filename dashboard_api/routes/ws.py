"""WebSocket ``/ws``: live readings, aggregates, alerts, fleet summary and pipeline health.

Connect with ``/ws[?channels=readings,alerts,...][&devices=a,b][&client=label]`` and the token in the
handshake's ``Authorization: Bearer`` (or ``X-API-Token``) header, or the page's session cookie; any role may
connect. A token in the query string is not accepted (it would end up in logs). A wrong or missing token is
refused on the handshake with HTTP 401.
Frames are JSON ``{"channel": name, "data": ...}``. Without ``channels`` a client gets ``readings``.

After connecting a client may send JSON messages:

* ``{"op": "subscribe", "channels": [...], "devices": [...]}`` -- add channels / devices;
* ``{"op": "unsubscribe", "channels": [...], "devices": [...]}``;
* ``{"op": "set", "channels": [...], "devices": [...]}`` -- replace (``devices: []`` = every device);
* ``{"op": "ping"}`` -- answered with a ``pong`` frame.

Each of these is answered with ``{"channel": "subscribed", "data": {"channels", "devices"}}`` (or ``pong``,
or ``error``). Subscribers of the ``heartbeat`` channel get ``{"channel": "heartbeat", "data": {"ts",
"dropped", "coalesced"}}`` every ``api_ws_heartbeat_s``; the server also sends WebSocket pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from dashboard_api.auth import websocket_role
from dashboard_api.deps import HubDep, SettingsDep
from dashboard_api.hub import ALL_CHANNELS, Subscriber
from dashboard_api.params import ID_PATTERN
from iotp.schema import now_ms

router = APIRouter()
MAX_DEVICES = 1000
_id_re = re.compile(ID_PATTERN)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _check(channels: list[str], devices: list[Any]) -> str | None:  # devices: from the client's JSON
    unknown = set(channels) - ALL_CHANNELS
    if unknown:
        return f"unknown channels: {','.join(sorted(unknown))} (known: {','.join(sorted(ALL_CHANNELS))})"
    bad = [d for d in devices if not isinstance(d, str) or not _id_re.match(d)]
    if bad:
        return f"bad device ids: {bad[:5]}"
    if len(devices) > MAX_DEVICES:
        return f"at most {MAX_DEVICES} devices per connection"
    return None


async def _refuse(websocket: WebSocket, status: int, detail: str) -> None:
    """HTTP error on the handshake where the server supports it, else close 1008 before accept."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=status))
    else:
        await websocket.close(code=1008, reason=detail)


def _frame(channel: str, data: dict) -> str:
    return orjson.dumps({"channel": channel, "data": data}).decode()


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, hub: HubDep, settings: SettingsDep) -> None:
    if websocket_role(websocket) is None:
        await _refuse(websocket, 401, "missing or wrong API token")
        return
    channels = _csv(websocket.query_params.get("channels")) or ["readings"]
    devices = _csv(websocket.query_params.get("devices") or websocket.query_params.get("device"))
    error = _check(channels, devices)
    if error:
        await _refuse(websocket, 400, error)
        return
    await websocket.accept()
    sub = hub.add(channels, devices, label=(websocket.query_params.get("client") or "")[:64])
    send_lock = asyncio.Lock()

    async def send(text: str) -> None:
        async with send_lock:
            await websocket.send_text(text)

    async def pump() -> None:
        while True:
            frame = await sub.get()
            await send(frame.decode())
            sub.sent += 1

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(settings.api_ws_heartbeat_s)
            if "heartbeat" in sub.channels:
                # queued like any frame: a client that does not read does not get a pile of heartbeats
                sub.offer(
                    ("heartbeat",),
                    orjson.dumps(
                        {
                            "channel": "heartbeat",
                            "data": {"ts": now_ms(), "dropped": sub.dropped, "coalesced": sub.coalesced},
                        }
                    ),
                )

    tasks = [asyncio.create_task(pump()), asyncio.create_task(heartbeat())]
    try:
        while True:
            text = await websocket.receive_text()
            reply = handle_message(sub, text)
            if reply is not None:
                await send(reply)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        hub.remove(sub)
        if websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()


def handle_message(sub: Subscriber, text: str) -> str | None:
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _frame("error", {"detail": "messages must be JSON"})
    if not isinstance(msg, dict):
        return _frame("error", {"detail": "messages must be JSON objects"})
    op = msg.get("op")
    if op == "ping":
        return _frame("pong", {"ts": now_ms()})
    if op not in ("subscribe", "unsubscribe", "set"):
        return _frame("error", {"detail": f"unknown op {op!r} (subscribe|unsubscribe|set|ping)"})
    channels, devices = msg.get("channels", []), msg.get("devices", [])
    if not isinstance(channels, list) or not isinstance(devices, list):
        return _frame("error", {"detail": "channels and devices must be lists"})
    error = _check(channels, devices)
    if error:
        return _frame("error", {"detail": error})
    if op == "subscribe":
        sub.channels |= set(channels)
        sub.devices |= set(devices)
    elif op == "unsubscribe":
        sub.channels -= set(channels)
        sub.devices -= set(devices)
    else:
        if "channels" in msg:
            sub.channels = set(channels)
        if "devices" in msg:
            sub.devices = set(devices)
    if len(sub.devices) > MAX_DEVICES:
        return _frame("error", {"detail": f"at most {MAX_DEVICES} devices per connection"})
    return _frame("subscribed", {"channels": sorted(sub.channels), "devices": sorted(sub.devices)})
