"""Fixtures of the dashboard tests: one real API process per test module (on the session's Redis, Kafka
and an embedded ClickHouse of its own), with a small WebSocket queue so that slow-client behaviour shows
quickly, plus a Redis client and helpers to seed what the stream jobs would write."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis

from infra.ports import free_port
from iotp.schema import now_ms
from iotp.settings import Settings
from iotp.topics import RedisNames, redis_names
from tests.support.processes import ProcessGroup
from tests.support.services import isolated
from tests.support.waiting import wait_for

API_ENV = {"IOTP_API_WS_QUEUE": "200", "IOTP_API_WS_COALESCE_AFTER": "50", "IOTP_API_WS_HEARTBEAT_S": "1"}


def module_settings(stack_settings: Settings, tmp_path) -> Settings:
    """Like the ``isolated_settings`` fixture, for a whole module: own names, own API port and state."""
    return isolated(
        stack_settings,
        tmp_path / "state",
        api_port=free_port(),
        gateway_metrics_port=free_port(),
    )


def wait_api_ready(settings: Settings, proc, timeout: float = 90) -> None:
    def ready():
        assert proc.alive(), f"API exited:\n{proc.output()[-3000:]}"
        try:
            return httpx.get(f"{settings.api_url}/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=timeout, interval=0.3, message="API ready")


@pytest.fixture(scope="module")
def api_settings(stack_settings, tmp_path_factory) -> Settings:
    return module_settings(stack_settings, tmp_path_factory.mktemp("dash"))


@pytest.fixture(scope="module")
def api(api_settings, tmp_path_factory) -> Iterator[Settings]:
    """A running ``iotp api`` process; yields its settings."""
    group = ProcessGroup(api_settings, tmp_path_factory.mktemp("dash-logs"))
    proc = group.start("api", env=API_ENV)
    try:
        wait_api_ready(api_settings, proc)
        yield api_settings
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def rds(api_settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(api_settings.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def names(api_settings) -> RedisNames:
    return redis_names(api_settings)


@pytest.fixture(scope="module")
def http(api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.api_url, headers={"Authorization": f"Bearer {api.api_token}"}, timeout=20) as client:
        yield client


def seed_device(
    rds: redis.Redis,
    names: RedisNames,
    device_id: str,
    device_type: str = "climate",
    seq: int = 1,
    status: str = "online",
    last_seen: int | None = None,
    **metrics: float,
) -> None:
    """What the stream jobs write for a device: its hash and its fleet index entry."""
    ts = now_ms()
    fields = {
        "device_id": device_id,
        "device_type": device_type,
        "seq": seq,
        "ts": ts,
        "rx": ts,
        "last_seen": last_seen if last_seen is not None else ts,
        "status": status,
    }
    fields.update({f"m:{k}": v for k, v in (metrics or {"temperature": 21.5}).items()})
    rds.hset(names.device_key(device_id), mapping=fields)
    rds.zadd(names.fleet_index, {device_id: ts})


def make_alert(
    device_id: str,
    rule: str = "threshold",
    severity: str = "critical",
    metric: str = "temperature",
    value: float = 99.0,
    device_type: str = "climate",
) -> dict:
    ts = now_ms()
    return {
        "v": 1,
        "alert_id": f"{device_id}:{rule}:{metric}:{ts}",
        "device_id": device_id,
        "device_type": device_type,
        "metric": metric,
        "rule": rule,
        "severity": severity,
        "state": "open",
        "value": value,
        "expected_min": 0.0,
        "expected_max": 40.0,
        "first_seen": ts,
        "last_seen": ts,
        "resolved_at": None,
        "message": f"{metric} {value} above 40.0",
    }


def open_alert(rds: redis.Redis, names: RedisNames, alert: dict, publish: bool = True) -> None:
    """What the stream jobs do when an alert opens: store it in ``open_alerts`` and publish it."""
    rds.hset(names.open_alerts, alert["alert_id"], orjson.dumps(alert))
    if publish:
        rds.publish(names.channel_alerts, orjson.dumps(alert))
