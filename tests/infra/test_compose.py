"""docker-compose.yml cannot run here (no Docker engine); keep it correct by checking its wiring against
the settings, and by docker-compose's own schema validation."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from infra.mqtt_auth import GATEWAY, SIMULATOR, render_acl
from infra.ports import free_port, wait_port
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


def test_mosquitto_refuses_anonymous_clients_and_the_pipeline_logs_in(compose):
    conf = (ROOT / "infra/docker/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "password_file /mosquitto/data/passwd" in conf and "acl_file /mosquitto/config/acl" in conf
    # the checked-in ACL is the one the local stack generates for the default prefix
    assert (ROOT / "infra/docker/mosquitto.acl").read_text() == render_acl(Settings(_env_file=None).mqtt_topic_prefix)
    services = compose["services"]
    for name, user, variable in (
        ("gateway", GATEWAY, "MQTT_GATEWAY_PASSWORD"),
        ("simulator", SIMULATOR, "MQTT_SIMULATOR_PASSWORD"),
    ):
        env = services[name]["environment"]
        assert env["IOTP_MQTT_USERNAME"] == user
        assert env["IOTP_MQTT_PASSWORD"].startswith("${" + variable), "the password must come from the environment"
        assert services["mosquitto"]["environment"][variable].startswith("${" + variable)
    for name in ("stream", "sink", "api"):
        assert "IOTP_MQTT_PASSWORD" not in services[name]["environment"], f"{name} uses no MQTT"


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("mosquitto"), reason="mosquitto not installed")
def test_compose_mosquitto_files_work_with_a_real_broker(tmp_path):
    """docker-compose's init script, config and ACL, run with the local Mosquitto 2.0 (paths and port moved
    into a temp dir): the service accounts log in, anonymous clients are refused."""
    from infra.mqtt_auth import Credentials
    from iotp.mqtt import broker_accepts

    port = free_port()
    conf = (ROOT / "infra/docker/mosquitto.conf").read_text()
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/data/passwd", str(tmp_path / "passwd"))
    conf = conf.replace("/mosquitto/config/acl", str(ROOT / "infra/docker/mosquitto.acl"))
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/") + "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    env = {
        **os.environ,
        "MQTT_GATEWAY_PASSWORD": "gw-pass",
        "MQTT_SIMULATOR_PASSWORD": "sim-pass",
        "MOSQUITTO_PASSWORD_FILE": str(tmp_path / "passwd"),
    }
    init = [
        str(ROOT / "infra/docker/mosquitto-init.sh"),
        shutil.which("mosquitto"),
        "-c",
        str(tmp_path / "mosquitto.conf"),
    ]
    broker = subprocess.Popen(init, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 15, "mosquitto")
        base = Settings(_env_file=None, mqtt_host="127.0.0.1", mqtt_port=port)

        def accepts(creds: Credentials | None) -> bool:
            update = {"mqtt_username": creds.username, "mqtt_password": creds.password} if creds else {}
            return broker_accepts(base.model_copy(update=update))

        assert accepts(Credentials(GATEWAY, "gw-pass"))
        assert accepts(Credentials(SIMULATOR, "sim-pass"))
        assert not accepts(None)
        assert not accepts(Credentials(GATEWAY, "sim-pass"))
    finally:
        broker.terminate()
        broker.wait(10)
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600


def test_metrics_endpoints_are_exposed_on_the_compose_network(compose):
    services = compose["services"]
    assert _settings(services["stream"]).metrics_host == "0.0.0.0", "a /metrics bound to loopback is unreachable"
    defaults = Settings(_env_file=None)
    for name, port in (
        ("gateway", defaults.gateway_metrics_port),
        ("stream", defaults.stream_metrics_port),
        ("sink", defaults.sink_metrics_port),
    ):
        command = services[name]["command"]
        assert command[command.index("--metrics-port") + 1] == str(port), name
        assert str(port) in [str(p) for p in services[name]["expose"]], f"{name} should expose {port}"
    assert defaults.api_metrics, "the API serves /metrics on its own port"
