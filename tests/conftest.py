"""Shared fixtures: one set of real backing services per test session, isolated names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra.kafka_admin import create_topics_sync
from iotp.settings import Settings
from tests.support.processes import ProcessGroup
from tests.support.services import docker_available, make_test_settings, services


def pytest_report_header(config) -> str:
    path = "testcontainers (Docker engine found)" if docker_available() else "native local services"
    return f"iotp backing services: {path}"


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Iterator[Settings]:
    """Mosquitto, Redis and a Kafka-wire broker for the whole session, on free loopback ports."""
    base = make_test_settings(tmp_path_factory.mktemp("iotp-stack"))
    with services(base) as settings:
        yield settings


@pytest.fixture
def isolated_settings(stack_settings: Settings, tmp_path) -> Settings:
    """The session's services, with topic names, Redis prefix, MQTT topic prefix, consumer groups and an
    embedded ClickHouse directory of this test's own; topics are created."""
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(update=dict(
        state_dir=tmp_path / "state",
        topic_readings=f"t{tag}.readings",
        topic_deadletter=f"t{tag}.readings.dlq",
        topic_aggregates=f"t{tag}.aggregates",
        topic_alerts=f"t{tag}.alerts",
        topic_sink_deadletter=f"t{tag}.sink.dlq",
        redis_prefix=f"t{tag}",
        mqtt_topic_prefix=f"t{tag}/telemetry",
        mqtt_share_group=f"gw{tag}",
        stream_app_id=f"iotp-stream-{tag}",
        sink_group=f"sink-{tag}",
    ))
    create_topics_sync(settings)
    return settings


@pytest.fixture
def processes(isolated_settings: Settings, tmp_path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(isolated_settings, tmp_path / "logs")
    yield group
    group.stop_all()
