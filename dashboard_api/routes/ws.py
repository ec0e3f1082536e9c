"""WebSocket: ``/ws?token=...&channels=readings,alerts`` streams the chosen channels as JSON frames
``{"channel": name, "data": ...}``."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

router = APIRouter()


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    from dashboard_api.auth import websocket_token_ok

    if not websocket_token_ok(websocket):
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or wrong API token")
        return
    hub = websocket.app.state.hub
    wanted = set((websocket.query_params.get("channels") or "readings").split(","))
    unknown = wanted - set(hub.channels)
    if unknown:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION,
                              reason=f"unknown channels: {','.join(sorted(unknown))}")
        return
    await websocket.accept()
    sub = hub.add(wanted)

    async def pump() -> None:
        while True:
            frame = await sub.queue.get()
            await websocket.send_text(frame.decode())

    sender = asyncio.create_task(pump())
    try:
        while True:
            await websocket.receive_text()  # pings / future subscription changes
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        hub.remove(sub)
