"""Typed FastAPI dependencies for the routes: what the app builds at start-up (``create_app`` and its
lifespan put it on ``app.state``), each as an ``Annotated[..., Depends(...)]`` alias.

A route declares what it needs in its signature instead of reaching into ``request.app.state``::

    async def get_thing(redis: RedisDep, names: NamesDep, history: HistoryDep) -> Thing: ...

so the types are checked, the needs are visible, and a test may override one with
``app.dependency_overrides``. The getters take an ``HTTPConnection``, so the same aliases work in HTTP
and WebSocket routes.
"""

from __future__ import annotations

from typing import Annotated

import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from fastapi import Depends
from starlette.requests import HTTPConnection

from dashboard_api.auth import TokenEntry, require_operator, require_token
from dashboard_api.history_calls import History
from dashboard_api.hub import Hub
from dashboard_api.live import LiveSource, StatsSampler
from iotp.profile_store import ProfileStore, settings_fallback
from iotp.settings import Settings
from iotp.topics import RedisNames


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


def get_redis(conn: HTTPConnection) -> aioredis.Redis:
    return conn.app.state.redis


def get_names(conn: HTTPConnection) -> RedisNames:
    return conn.app.state.names


def get_clickhouse(conn: HTTPConnection) -> Client:
    return conn.app.state.clickhouse


def get_history(conn: HTTPConnection) -> History:
    state = conn.app.state
    return History(state.clickhouse, state.settings.clickhouse_database)


def get_hub(conn: HTTPConnection) -> Hub:
    return conn.app.state.hub


def get_sampler(conn: HTTPConnection) -> StatsSampler:
    return conn.app.state.sampler


def get_tokens(conn: HTTPConnection) -> list[TokenEntry]:
    return conn.app.state.tokens


def get_live(conn: HTTPConnection) -> LiveSource:
    state = conn.app.state
    return LiveSource.of(state.settings, state.redis, state.names)


async def get_profile_store(conn: HTTPConnection) -> ProfileStore:
    """The profile store of this API process (kept on the app); the first use seeds it from the profile
    files."""
    state = conn.app.state
    store: ProfileStore | None = getattr(state, "profile_store", None)
    if store is None:
        store = ProfileStore(state.redis, state.names)
        await store.seed(settings_fallback(state.settings))
        state.profile_store = store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
NamesDep = Annotated[RedisNames, Depends(get_names)]
ClickHouseDep = Annotated[Client, Depends(get_clickhouse)]
HistoryDep = Annotated[History, Depends(get_history)]
HubDep = Annotated[Hub, Depends(get_hub)]
SamplerDep = Annotated[StatsSampler, Depends(get_sampler)]
TokensDep = Annotated[list[TokenEntry], Depends(get_tokens)]
LiveDep = Annotated[LiveSource, Depends(get_live)]
ProfileStoreDep = Annotated[ProfileStore, Depends(get_profile_store)]
#: The caller's role; 401 without a valid token (any role).
RoleDep = Annotated[str, Depends(require_token)]
#: The caller's role; 401 without a valid token, 403 below operator.
OperatorDep = Annotated[str, Depends(require_operator)]
