"""The local stack: the backing services (Mosquitto, Redis, Kafka-wire broker) and, optionally, the
pipeline's own processes, all under one supervisord whose files live in ``<state_dir>/run``.

``up`` is idempotent: services that already run are left alone; a port held by a foreign process is a
clear error rather than a confusing failure later.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from infra.kafka_admin import create_topics_sync
from infra.kafka_broker import broker_command
from infra.kafka_storage import broker_storage, store_command
from infra.mqtt_auth import GATEWAY, SIMULATOR, MqttAuth, credentials_env
from infra.ports import free_port, port_open, wait_port
from infra.supervisor import Program, Supervisor
from infra.system_packages import ensure_binaries
from iotp.settings import Settings

SERVICES_GROUP = "services"
KAFKA_STORE = "kafka-store"  # the local broker's durable store (infra/kafka_storage.py)
PIPELINE_GROUP = "pipeline"


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int


def loopback_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a stack of its own (a benchmark's): ``state_dir`` and free loopback ports for Mosquitto,
    Redis and the Kafka-wire broker; ``overrides`` on top."""
    values: dict[str, object] = {
        "state_dir": state_dir,
        "mqtt_port": free_port(),
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "kafka_bootstrap": f"127.0.0.1:{free_port()}",
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``IOTP_*`` variables, so child processes see exactly this configuration."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = json.dumps(value)  # pydantic-settings parses complex values as JSON
        elif isinstance(value, Path):
            text = str(value.resolve())
        else:
            text = str(value)
        env[f"IOTP_{name.upper()}"] = text
    return env


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = (settings.state_dir / "run").resolve()
        self.supervisor = Supervisor(self.run_dir)

    # ------------------------------------------------------------- endpoints
    def endpoints(self) -> list[Endpoint]:
        s = self.settings
        redis = urlparse(s.redis_url)
        kafka_host, kafka_port = s.kafka_bootstrap.split(",")[0].rsplit(":", 1)
        return [
            Endpoint("mosquitto", s.mqtt_host, s.mqtt_port),
            Endpoint("redis", redis.hostname or "127.0.0.1", redis.port or 6379),
            Endpoint("kafka", kafka_host, int(kafka_port)),
            *self._store_endpoints(kafka_host),
        ]

    def _store_endpoints(self, kafka_host: str) -> list[Endpoint]:
        """The local broker's durable store (``IOTP_KAFKA_STORAGE=s3``), on the broker's host."""
        if self.settings.kafka_storage != "s3":
            return []
        return [Endpoint(KAFKA_STORE, kafka_host, self.settings.kafka_storage_port)]

    # -------------------------------------------------------------- programs
    def _service_programs(self) -> list[Program]:
        bins = ensure_binaries()
        ep = {e.name: e for e in self.endpoints()}
        mosquitto_conf = self.run_dir / "mosquitto.conf"
        mosquitto_dir = self.run_dir / "mosquitto"
        mosquitto_dir.mkdir(parents=True, exist_ok=True)
        auth = self.mqtt_auth()
        auth.ensure_services()  # generated on the first `up`, kept afterwards; writes passwd + ACL
        mosquitto_conf.write_text(
            f"listener {ep['mosquitto'].port} {ep['mosquitto'].host}\n"
            # Per-device accounts and an ACL (infra/mqtt_auth.py, docs/security.md); reloaded on SIGHUP.
            "allow_anonymous false\n"
            f"password_file {auth.password_file}\n"
            f"acl_file {auth.acl_file}\n"
            # Run as the invoking user (Debian's mosquitto would drop root to "mosquitto", which cannot
            # write the persistence files under a private state dir).
            f"user {getpass.getuser()}\n"
            # The defaults (20 in flight, 1000 queued) throttle a fast QoS 1 consumer badly.
            "max_inflight_messages 1000\n"
            "max_queued_messages 200000\n"
            "max_packet_size 1048576\n"
            # Persistent sessions and their queued QoS 1 messages survive a restart: saved at shutdown and
            # every 2 s (a kill -9 can lose at most the last 2 s of the broker's queue).
            "persistence true\n"
            f"persistence_location {mosquitto_dir}/\n"
            "autosave_interval 2\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        redis_dir = self.run_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        return [
            Program("mosquitto", [str(bins["mosquitto"]), "-c", str(mosquitto_conf)], SERVICES_GROUP, priority=10),
            Program(
                "redis",
                [
                    str(bins["redis-server"]),
                    "--port",
                    str(ep["redis"].port),
                    "--bind",
                    ep["redis"].host,
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--dir",
                    str(redis_dir),
                    "--daemonize",
                    "no",
                ],
                SERVICES_GROUP,
                priority=10,
            ),
            *self._kafka_programs(ep),
        ]

    def _kafka_programs(self, ep: dict[str, Endpoint]) -> list[Program]:
        """tansu, and with durable storage its store first. The broker does not autostart: ``up`` starts it
        once the store answers, so it never begins on a store that is not there yet."""
        store = ep.get(KAFKA_STORE)
        storage_url, storage_env = broker_storage(
            self.settings.kafka_storage, store.host if store else "", store.port if store else 0
        )
        kafka = Program(
            "kafka",
            broker_command(ep["kafka"].host, ep["kafka"].port, storage_url),
            SERVICES_GROUP,
            autostart=store is None,
            env=storage_env,
            priority=10,
        )
        if store is None:
            return [kafka]
        store_dir = self.run_dir / KAFKA_STORE
        return [
            Program(
                KAFKA_STORE, store_command(store.host, store.port, store_dir, self.settings), SERVICES_GROUP, priority=5
            ),
            kafka,
        ]

    def _start_store(self, timeout: float) -> None:
        """Start the broker's durable store (if configured) and wait until it answers."""
        store = next((e for e in self.endpoints() if e.name == KAFKA_STORE), None)
        if store is None:
            return
        state = {p["name"]: p["statename"] for p in self.supervisor.processes()}.get(KAFKA_STORE)
        if state not in ("RUNNING", "STARTING"):
            self.supervisor.start(KAFKA_STORE)
        try:
            wait_port(store.host, store.port, timeout, KAFKA_STORE)
        except TimeoutError as exc:
            raise StackError(f"{exc}; see {self.supervisor.log_dir / (KAFKA_STORE + '.log')}") from exc

    def mqtt_auth(self) -> MqttAuth:
        return MqttAuth(self.run_dir, self.settings.mqtt_topic_prefix)

    def reload_mqtt_auth(self) -> bool:
        """Make a running Mosquitto re-read its password and ACL files (SIGHUP); False if it is not running."""
        if not any(p["name"] == "mosquitto" and p["statename"] == "RUNNING" for p in self.supervisor.processes()):
            return False
        self.supervisor.signal("mosquitto", "HUP")
        return True

    def _pipeline_programs(self, simulate_args: list[str], gateways: int = 1, workers: int = 1) -> list[Program]:
        env = settings_env(self.settings)
        # MQTT accounts of their own for the gateways and the simulator; the other processes use no MQTT.
        env.pop("IOTP_MQTT_USERNAME", None)
        env.pop("IOTP_MQTT_PASSWORD", None)
        accounts = self.mqtt_auth().ensure_services()
        gateway_env = {**env, **credentials_env(accounts[GATEWAY])}
        simulator_env = {**env, **credentials_env(accounts[SIMULATOR])}
        iotp = [sys.executable, "-m", "iotp_cli"]
        programs = []
        for i in range(gateways):
            # A stable client id per instance: its persistent MQTT session survives a restart.
            programs.append(
                Program(
                    f"gateway-{i}",
                    [
                        *iotp,
                        "gateway",
                        "--client-id",
                        f"iotp-gateway-{i}",
                        "--metrics-port",
                        str(self.settings.gateway_metrics_port + i),
                    ],
                    PIPELINE_GROUP,
                    autostart=False,
                    env=gateway_env,
                    priority=20,
                )
            )
        for i in range(workers):
            stream_port = self.settings.stream_metrics_port + i if self.settings.stream_metrics_port else 0
            programs.append(
                Program(
                    f"stream-{i}",
                    [*iotp, "stream", "--index", str(i), "--metrics-port", str(stream_port)],
                    PIPELINE_GROUP,
                    autostart=False,
                    env=env,
                    priority=20,
                )
            )
        programs.append(Program("api", [*iotp, "api"], PIPELINE_GROUP, autostart=False, env=env, priority=30))
        programs.append(
            Program(
                "simulator",
                [*iotp, "simulate", *simulate_args],
                PIPELINE_GROUP,
                autostart=False,
                env=simulator_env,
                priority=40,
            )
        )
        return programs

    # ------------------------------------------------------------ lifecycle
    def up(
        self, simulate_args: list[str] | None = None, timeout: float = 30.0, gateways: int = 1, workers: int = 1
    ) -> None:
        """Start the services (and the pipeline when ``simulate_args`` is given) and wait for them."""
        if not self.supervisor.running():
            taken = [e for e in self.endpoints() if port_open(e.host, e.port)]
            if taken:
                names = ", ".join(f"{e.name} {e.host}:{e.port}" for e in taken)
                raise StackError(
                    f"port already in use by another process: {names}. Stop that process or choose "
                    "other ports (IOTP_MQTT_PORT, IOTP_REDIS_URL, IOTP_KAFKA_BOOTSTRAP, IOTP_KAFKA_STORAGE_PORT)."
                )
        programs = self._service_programs()
        programs += self._pipeline_programs(simulate_args or [], gateways, workers)
        self.supervisor.write_config(programs)
        self.supervisor.conf.chmod(0o600)  # the programs' environment holds the MQTT passwords and API token
        self.supervisor.start_daemon()
        self._start_store(timeout)
        self.supervisor.start_group(SERVICES_GROUP)
        for endpoint in self.endpoints():
            try:
                wait_port(endpoint.host, endpoint.port, timeout, endpoint.name)
            except TimeoutError as exc:
                log = self.supervisor.log_dir / f"{endpoint.name}.log"
                raise StackError(f"{exc}; see {log}") from exc
        create_topics_sync(self.settings)
        if simulate_args is not None:
            self.supervisor.start_group(PIPELINE_GROUP)

    def wait_api(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        url = f"{self.settings.api_url}/health/ready"
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            failed = [
                p["name"]
                for p in self.supervisor.processes()
                if p["group"] == PIPELINE_GROUP and p["statename"] in ("FATAL", "BACKOFF")
            ]
            if failed:
                logs = ", ".join(str(self.supervisor.log_dir / f"{n}.log") for n in failed)
                raise StackError(f"{', '.join(failed)} keep crashing; see {logs}")
            time.sleep(0.5)
        raise StackError(f"dashboard API not ready within {timeout:.0f}s; see {self.supervisor.log_dir / 'api.log'}")

    def down(self) -> None:
        """Stop in dependency order, then supervisord. Left to itself, supervisord stops the services group
        before the pipeline and every program of a group at once, so the pipeline's last offset commits
        would miss the broker, and the broker's last writes its store."""
        if self.supervisor.running():
            self.supervisor.stop_group(PIPELINE_GROUP)
            for name in ("kafka", KAFKA_STORE):
                if any(p["name"] == name and p["statename"] == "RUNNING" for p in self.supervisor.processes()):
                    self.supervisor.stop(name)
        self.supervisor.shutdown()

    def status(self) -> list[dict]:
        """One row per program: name, group, state, pid, uptime; plus whether its port answers."""
        ports = {e.name: e for e in self.endpoints()}
        rows = []
        for info in self.supervisor.processes():
            endpoint = ports.get(info["name"])
            rows.append(
                {
                    "name": info["name"],
                    "group": info["group"],
                    "state": info["statename"],
                    "pid": info["pid"] or None,
                    "description": info["description"],
                    "endpoint": f"{endpoint.host}:{endpoint.port}" if endpoint else "",
                    "answers": port_open(endpoint.host, endpoint.port) if endpoint else None,
                }
            )
        return rows
