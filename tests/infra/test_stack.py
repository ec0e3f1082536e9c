"""The local stack against the real binaries: start, idempotent second start, port conflicts, stop."""

from __future__ import annotations

import socket

import pytest
import redis

from infra.ports import port_open
from infra.stack import LocalStack, StackError, settings_env
from iotp.settings import Settings
from tests.support.services import make_test_settings

pytestmark = pytest.mark.integration


def test_up_is_idempotent_and_down_stops_everything(tmp_path):
    stack = LocalStack(make_test_settings(tmp_path / "state"))
    try:
        stack.up()
        first = {row["name"]: row["pid"] for row in stack.status() if row["group"] == "services"}
        assert set(first) == {"mosquitto", "redis", "kafka-store", "kafka"}
        assert all(row["answers"] for row in stack.status() if row["group"] == "services")

        stack.up()  # a second up leaves the running services alone
        second = {row["name"]: row["pid"] for row in stack.status() if row["group"] == "services"}
        assert second == first

        client = redis.Redis.from_url(stack.settings.redis_url)
        assert client.ping()
    finally:
        stack.down()
    assert not any(port_open(e.host, e.port) for e in stack.endpoints())
    assert stack.status() == []


def test_port_taken_by_a_foreign_process_is_a_clear_error(tmp_path):
    settings = make_test_settings(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.mqtt_port))
        squatter.listen()
        with pytest.raises(StackError, match=rf"mosquitto 127\.0\.0\.1:{settings.mqtt_port}.*IOTP_MQTT_PORT"):
            LocalStack(settings).up()


def test_every_setting_is_overridable_by_environment(monkeypatch):
    monkeypatch.setenv("IOTP_MQTT_PORT", "12345")
    monkeypatch.setenv("IOTP_STREAM_WINDOWS_S", "5,30")
    monkeypatch.setenv("IOTP_API_TOKEN", "s3cret")
    settings = Settings(_env_file=None)
    assert (settings.mqtt_port, settings.stream_windows_s, settings.api_token) == (12345, [5, 30], "s3cret")


def test_settings_env_round_trips_for_child_processes(monkeypatch, tmp_path):
    original = make_test_settings(
        tmp_path, stream_windows_s=[2, 4], clickhouse_url="http://ch:8123", gc_thresholds=(5000, 5, 50)
    )
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    restored = Settings(_env_file=None)
    assert restored.model_dump() == {**original.model_dump(), "state_dir": original.state_dir.resolve()}


@pytest.mark.parametrize(("first", "expected"), [(9300, ["9300", "9301"]), (0, ["0", "0"])])
def test_each_stream_worker_gets_its_metrics_port(tmp_path, first, expected):
    stack = LocalStack(make_test_settings(tmp_path, stream_metrics_port=first))
    commands = [p.command for p in stack._pipeline_programs([], workers=2) if p.name.startswith("stream-")]
    assert [c[c.index("--metrics-port") + 1] for c in commands] == expected
    assert [c[c.index("--index") + 1] for c in commands] == ["0", "1"]
