"""API tokens with roles, for REST and WebSocket, and the browser's session cookie.

Roles, in order: ``viewer`` (read everything, live WebSocket) < ``operator`` (also acknowledge alerts and
change configuration such as device profiles). ``IOTP_API_TOKEN`` is an operator token; ``IOTP_API_TOKENS``
adds more, ``role:token`` or ``role:sha256:<hex of the token's SHA-256>`` (so a config file need not hold
the token itself), comma-separated.

A client sends its token as ``Authorization: Bearer <token>`` or ``X-API-Token: <token>`` (REST and the
WebSocket handshake). The browser page exchanges it once for an HttpOnly, SameSite=Strict cookie (the
login form, or ``/?token=`` which redirects to ``/`` at once), so the token is in no URL the page uses
afterwards, in no JavaScript, and never in a query string of the REST or WebSocket calls. Tokens are not
accepted from query strings (they end up in access logs and browser history); :class:`RedactTokens` removes
any ``token=`` value from the access log anyway.

401 = no or unknown token; 403 = a valid token whose role is too low (the message names the role needed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from fastapi import HTTPException, Request, WebSocket, status

from iotp.settings import Settings

ROLES = ("viewer", "operator")  # each role may do everything of the ones before it
COOKIE = "iotp_session"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class TokenConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TokenEntry:
    role: str
    digest: bytes  # SHA-256 of the token: compared in constant time, the token itself is not kept


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(settings: Settings) -> list[TokenEntry]:
    """The configured tokens; a malformed ``IOTP_API_TOKENS`` entry is an error naming the entry's role."""
    entries = [TokenEntry("operator", _digest(settings.api_token))] if settings.api_token else []
    for raw in (settings.api_tokens or "").split(","):
        raw = raw.strip()
        if not raw:
            continue
        role, sep, secret = raw.partition(":")
        if not sep or role not in ROLES or not secret:
            raise TokenConfigError(
                f"IOTP_API_TOKENS: entries are role:token or role:sha256:<hex> with role in {ROLES}; "
                f"got one starting {role[:12]!r}"
            )
        if secret.startswith("sha256:"):
            hexdigest = secret.removeprefix("sha256:")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
                raise TokenConfigError(f"IOTP_API_TOKENS: a {role} sha256 entry needs 64 hex digits")
            entries.append(TokenEntry(role, bytes.fromhex(hexdigest)))
        else:
            entries.append(TokenEntry(role, _digest(secret)))
    return entries


def role_of(entries: list[TokenEntry], token: str | None) -> str | None:
    """The highest role of a matching token, or None. Every entry is compared (constant time each)."""
    if not token:
        return None
    given = _digest(token)
    best = None
    for entry in entries:
        if hmac.compare_digest(entry.digest, given) and (best is None or ROLES.index(entry.role) > ROLES.index(best)):
            best = entry.role
    return best


def _token_from(conn: Request | WebSocket) -> tuple[str | None, bool]:
    """(token, came from the cookie). Query strings are not a source."""
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if conn.headers.get("x-api-token"):
        return conn.headers["x-api-token"], False
    return conn.cookies.get(COOKIE), True


def _same_origin(conn: Request | WebSocket) -> bool:
    """The Origin (browsers send it on POST and on WebSocket handshakes) is this server, or absent."""
    origin = conn.headers.get("origin")
    if not origin:
        return True
    return urlparse(origin).netloc == conn.headers.get("host")


def connection_role(conn: Request | WebSocket) -> str | None:
    token, from_cookie = _token_from(conn)
    if from_cookie and not _same_origin(conn):
        return None  # a cookie sent by another site's page (cross-site request / WebSocket hijacking)
    return role_of(conn.app.state.tokens, token)


def require_role(role: str) -> Callable[[Request], Awaitable[str]]:
    """A FastAPI dependency: the request's token must have ``role`` (or a higher one); returns its role.

    Use ``dependencies=[Depends(require_role("operator"))]`` on a route that changes state."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def check(request: Request) -> str:
        have = connection_role(request)
        if have is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "missing or wrong API token", headers={"WWW-Authenticate": "Bearer"}
            )
        if ROLES.index(have) < ROLES.index(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role; the token has {have}")
        return have

    check.__name__ = f"require_{role}"
    return check


require_token = require_role("viewer")
require_operator = require_role("operator")


def websocket_role(websocket: WebSocket) -> str | None:
    return connection_role(websocket)


# ------------------------------------------------------------------------------------------ access log
_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token|api_token)=)[^&\s\"]*", re.I)


class RedactTokens(logging.Filter):
    """Replaces any ``token=`` query value in uvicorn's request log lines by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_QUERY.sub(r"\1***", record.msg)
        return True


def install_log_redaction() -> None:
    """Idempotent: put :class:`RedactTokens` on uvicorn's loggers (after uvicorn configured logging). HTTP
    requests are logged on ``uvicorn.access``, WebSocket handshakes on ``uvicorn.error``."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
