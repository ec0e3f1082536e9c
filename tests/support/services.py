"""Backing services for the tests: containers through testcontainers where a Docker engine answers,
the project's native local stack (``infra.stack``) otherwise. Either way, real services over real
connections, on ports of their own, so a developer's running stack and parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from infra.kafka_admin import create_topics_sync
from infra.mqtt_auth import ROLES, Credentials, MqttAuth
from infra.ports import free_port
from infra.stack import LocalStack
from iotp.settings import Settings


def docker_available() -> bool:
    if os.environ.get("IOTP_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def make_test_settings(state_dir: Path, **overrides) -> Settings:
    """Settings for a test session: fresh ports and an isolated state dir (embedded ClickHouse inside)."""
    values = dict(
        state_dir=state_dir,
        mqtt_port=free_port(),
        # The broker's ACL is rendered from this prefix; as an MQTT filter it covers every test's own
        # prefix ``t<tag>/telemetry`` (see ``isolated``).
        mqtt_topic_prefix="+/telemetry",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_storage_port=free_port(),
        api_port=free_port(),
        gateway_metrics_port=free_port(),
        stream_metrics_port=free_port(),
        sink_metrics_port=free_port(),
    )
    values.update(overrides)
    return Settings(**values)


def isolated(settings: Settings, state_dir: Path, **overrides) -> Settings:
    """The same services with names of its own: topics (created here), Redis prefix, MQTT topic prefix and
    share group, consumer groups, and an embedded ClickHouse directory under ``state_dir``."""
    tag = uuid.uuid4().hex[:8]
    values = dict(
        state_dir=state_dir,
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
    )
    values.update(overrides)
    result = settings.model_copy(update=values)
    create_topics_sync(result)
    return result


# The service accounts of each test broker, by address: a gateway started anywhere in the tests (with any
# isolated settings) finds its account through ``as_role``.
_ACCOUNTS: dict[tuple[str, int], dict[str, Credentials]] = {}


def as_role(settings: Settings, role: str) -> Settings:
    """The settings with the MQTT account of ``role`` (``gateway`` reads, ``simulator`` writes) on the
    test broker they point at."""
    accounts = _ACCOUNTS.get((settings.mqtt_host, settings.mqtt_port))
    if accounts is None:
        return settings
    creds = accounts[ROLES[role]]
    return settings.model_copy(update={"mqtt_username": creds.username, "mqtt_password": creds.password})


def _with_accounts(settings: Settings, accounts: dict[str, Credentials]) -> Settings:
    """Remember the broker's accounts; the settings carry the simulator's (publishing is what tests do)."""
    _ACCOUNTS[(settings.mqtt_host, settings.mqtt_port)] = accounts
    return as_role(settings, "simulator")


@contextlib.contextmanager
def native_services(settings: Settings) -> Iterator[Settings]:
    stack = LocalStack(settings)
    stack.up()
    try:
        yield _with_accounts(settings, stack.mqtt_auth().ensure_services())
    finally:
        stack.down()


@contextlib.contextmanager
def container_services(settings: Settings) -> Iterator[Settings]:
    """Mosquitto, Redis and Apache Kafka (KRaft) in containers -- the images docker-compose uses."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    conf = settings.state_dir / "mosquitto-test.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    auth = MqttAuth.for_settings(settings)
    accounts = auth.ensure_services()
    auth.password_file.chmod(0o644)  # read by the container's mosquitto user (a throwaway test account)
    conf.write_text(
        "listener 1883 0.0.0.0\nallow_anonymous false\npassword_file /mosquitto/config/passwd\n"
        "acl_file /mosquitto/config/acl\nmax_inflight_messages 1000\n"
        "max_queued_messages 200000\npersistence false\n"
    )
    mosquitto = (
        DockerContainer("eclipse-mosquitto:2.0")
        .with_exposed_ports(1883)
        .with_volume_mapping(str(conf), "/mosquitto/config/mosquitto.conf")
        .with_volume_mapping(str(auth.password_file), "/mosquitto/config/passwd")
        .with_volume_mapping(str(auth.acl_file), "/mosquitto/config/acl")
    )
    with RedisContainer("redis:7.2") as redis, KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka, mosquitto:
        wait_for_logs(mosquitto, "running", timeout=30)
        updated = settings.model_copy(
            update=dict(
                mqtt_host=mosquitto.get_container_host_ip(),
                mqtt_port=int(mosquitto.get_exposed_port(1883)),
                redis_url=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
                kafka_bootstrap=kafka.get_bootstrap_server(),
            )
        )
        create_topics_sync(updated)
        yield _with_accounts(updated, accounts)


def services(settings: Settings) -> contextlib.AbstractContextManager[Settings]:
    return container_services(settings) if docker_available() else native_services(settings)
