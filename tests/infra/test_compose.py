"""docker-compose.yml cannot run here (no Docker engine); keep it correct by checking its wiring against
the settings, and by docker-compose's own schema validation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from iotp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
INFRA = {
    "mosquitto": "eclipse-mosquitto",
    "kafka": "apache/kafka",
    "redis": "redis",
    "clickhouse": "clickhouse/clickhouse-server",
}
PIPELINE = ["gateway", "stream", "sink", "api", "simulator"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _settings(service: dict) -> Settings:
    env = {k: v for k, v in service["environment"].items() if k.startswith("IOTP_")}
    return Settings(**{k.removeprefix("IOTP_").lower(): v for k, v in env.items()}, _env_file=None)


def test_compose_passes_docker_compose_schema_validation():
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose missing: infra/bootstrap.sh --dev installs it"
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_real_images_with_healthchecks(compose):
    services = compose["services"]
    for name, image in INFRA.items():
        assert services[name]["image"].split(":")[0] == image
        assert "healthcheck" in services[name], f"{name} needs a healthcheck for depends_on"


def test_kafka_runs_in_kraft_mode(compose):
    env = compose["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics are created with explicit partitions"


def test_pipeline_services_share_one_image_and_wait_for_healthy_infra(compose):
    services = compose["services"]
    builds = {services[name]["build"]["dockerfile"] for name in PIPELINE}
    assert builds == {"infra/docker/Dockerfile"}
    assert (ROOT / "infra/docker/Dockerfile").exists()
    for name in ["gateway", "stream", "sink", "api"]:
        deps = services[name]["depends_on"]
        for infra in INFRA:
            assert deps[infra]["condition"] == "service_healthy", f"{name} must wait for {infra}"
        assert deps["topics"]["condition"] == "service_completed_successfully"


def test_environment_names_are_settings_fields(compose):
    fields = {f"IOTP_{name.upper()}" for name in Settings.model_fields}
    for name in PIPELINE:
        unknown = {k for k in compose["services"][name]["environment"] if k.startswith("IOTP_")} - fields
        assert not unknown, f"{name} sets unknown settings {unknown}"


def test_environment_points_at_the_compose_services(compose):
    services = compose["services"]
    settings = _settings(services["gateway"])
    kafka_env = services["kafka"]["environment"]
    assert settings.kafka_bootstrap == kafka_env["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    assert settings.mqtt_host == "mosquitto"
    mosquitto_conf = (ROOT / "infra/docker/mosquitto.conf").read_text()
    assert f"listener {settings.mqtt_port} " in mosquitto_conf
    redis = urlparse(settings.redis_url)
    assert (redis.hostname, redis.port) == ("redis", 6379)
    clickhouse = urlparse(settings.clickhouse_url)
    assert clickhouse.hostname == "clickhouse" and clickhouse.port == 8123
    assert not settings.clickhouse_embedded, "compose runs a ClickHouse server"
    assert not settings.api_embedded_sink, "with a server, the sink is its own service"
    assert "sink" in services and services["sink"]["command"][0] == "sink"


def test_published_ports_match_the_container_ports(compose):
    services = compose["services"]
    expected = {"mosquitto": 1883, "kafka": 9092, "redis": 6379, "clickhouse": 8123, "api": 8000}
    for name, port in expected.items():
        container_ports = {int(str(p).split(":")[-1]) for p in services[name]["ports"]}
        assert port in container_ports, f"{name} should publish {port}"
    assert Settings(_env_file=None).api_port == 8000


def test_no_secret_is_hard_coded(compose):
    for name in PIPELINE:
        env = compose["services"][name]["environment"]
        assert env["IOTP_API_TOKEN"].startswith("${"), "the token must come from the environment"
    assert compose["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"].startswith("${")
