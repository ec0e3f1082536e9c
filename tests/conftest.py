"""Shared fixtures: one set of real backing services per test session, isolated names per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iotp.settings import Settings
from tests.support.processes import ProcessGroup
from tests.support.services import docker_available, isolated, make_test_settings, services


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
    return isolated(stack_settings, tmp_path / "state")


@pytest.fixture
def processes(isolated_settings: Settings, tmp_path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(isolated_settings, tmp_path / "logs")
    yield group
    group.stop_all()
