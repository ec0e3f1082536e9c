"""API token check for REST (``Authorization: Bearer`` or ``X-API-Token``) and WebSocket (also
``?token=``)."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request, WebSocket, status


def _token_from(headers, query) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-token") or query.get("token")


def _valid(expected: str, given: str | None) -> bool:
    return given is not None and secrets.compare_digest(expected.encode(), given.encode())


async def require_token(request: Request) -> None:
    if not _valid(request.app.state.settings.api_token, _token_from(request.headers, request.query_params)):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API token", headers={"WWW-Authenticate": "Bearer"}
        )


def websocket_token_ok(websocket: WebSocket) -> bool:
    return _valid(websocket.app.state.settings.api_token, _token_from(websocket.headers, websocket.query_params))
