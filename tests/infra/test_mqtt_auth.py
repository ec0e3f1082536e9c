"""MQTT device authentication and authorization against the real Mosquitto of the test stack: anonymous and
wrong passwords are refused, a device publishes only to its own topic (a spoofed publish gets PUBACK 135
and never reaches Kafka), and ``iotp devices add`` / ``remove`` take effect without restarting the broker."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest

from infra.mqtt_auth import GATEWAY, SIMULATOR, MqttAuth, hash_password, render_acl, verify_password
from infra.stack import LocalStack, settings_env
from iotp.mqtt import broker_accepts, connect, make_client
from iotp.schema import reading_id
from iotp.settings import Settings
from iotp.topics import mqtt_topic
from tests.gateway.helpers import read_until, reading_ids
from tests.support.mqtt_publish import reading
from tests.support.services import docker_available
from tests.support.waiting import wait_for

NOT_AUTHORIZED = 135
native_only = pytest.mark.skipif(docker_available(), reason="manages the native local stack's credential store")


# ------------------------------------------------------------------------------------------- pure logic
def test_hash_is_mosquittos_pbkdf2_format_and_verifies():
    hashed = hash_password("s3cret", salt=b"0123456789ab")
    assert re.fullmatch(r"\$7\$1000\$[A-Za-z0-9+/=]{16}\$[A-Za-z0-9+/=]{88}", hashed)
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret!", hashed)
    assert not verify_password("s3cret", "garbage")


@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd not installed")
def test_hashes_of_mosquitto_passwd_verify(tmp_path):
    """Cross-check against Mosquitto's own tool, so our hashes and its are one format."""
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "dev-1", "pw-of-dev-1"], check=True)
    hashed = path.read_text().strip().split(":", 1)[1]
    assert verify_password("pw-of-dev-1", hashed)
    assert not verify_password("other", hashed)


def test_acl_limits_devices_to_their_own_topic():
    acl = render_acl("iotp/telemetry")
    assert "pattern write iotp/telemetry/+/%u\n" in acl
    assert f"user {GATEWAY}\ntopic read iotp/telemetry/#\n" in acl
    assert f"user {SIMULATOR}\ntopic write iotp/telemetry/#\n" in acl
    assert "readwrite iotp/telemetry" not in acl and "topic read #" not in acl


# ------------------------------------------------------------------------------------ against the broker
class Device:
    """One MQTT 5 connection that records the CONNACK and every PUBACK reason code."""

    def __init__(self, settings: Settings) -> None:
        self.connack: int | None = None
        self.acks: dict[int, int] = {}
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = make_client(settings)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        connect(self.client, settings)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code.value
        self.connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.acks[mid] = reason_code.value

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.acks, 10, message="PUBACK")
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _connack(settings: Settings) -> int:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    try:
        wait_for(lambda: codes, 10, message="CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def _iotp(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings)}
    env.pop("IOTP_MQTT_USERNAME", None)
    env.pop("IOTP_MQTT_PASSWORD", None)
    return subprocess.run(
        [sys.executable, "-m", "iotp_cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _add_device(stack_settings: Settings, device_id: str, device_type: str = "climate") -> str:
    result = _iotp(stack_settings, "devices", "add", device_id, "--type", device_type)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"^password: (\S+)$", result.stdout, re.M).group(1)


def test_anonymous_connect_is_refused(isolated_settings):
    anonymous = isolated_settings.model_copy(update={"mqtt_username": None, "mqtt_password": None})
    assert _connack(anonymous) == NOT_AUTHORIZED
    assert not broker_accepts(anonymous)
    assert broker_accepts(isolated_settings), "the simulator account of the test stack connects"


def test_wrong_password_is_refused(isolated_settings):
    wrong = isolated_settings.model_copy(update={"mqtt_password": isolated_settings.mqtt_password + "x"})
    assert _connack(wrong) == NOT_AUTHORIZED


@native_only
async def test_device_publishes_its_own_topic_and_a_spoof_is_refused(stack_settings, isolated_settings, processes):
    """``iotp devices add`` on the running stack (no restart) -> the device connects, its reading reaches
    Kafka through the gateway; the same device publishing to another device's topic gets PUBACK 135 and
    nothing of it reaches Kafka (a sentinel published after it does)."""
    settings = isolated_settings
    gw = processes.start("gateway", "--client-id", f"gw-{uuid.uuid4().hex[:6]}", "--metrics-port", "0")
    wait_for(lambda: b"subscribed" in gw.log.read_bytes() or not gw.alive(), 60, message="gateway subscribed")
    assert gw.alive(), gw.output()

    tag = uuid.uuid4().hex[:6]
    me, victim = f"meter-{tag}", f"victim-{tag}"
    password = _add_device(stack_settings, me)
    as_me = settings.model_copy(update={"mqtt_username": me, "mqtt_password": password})
    device = Device(as_me)
    try:
        assert device.connack == 0
        mine, mine_later = reading(me, 1), reading(me, 2)
        foreign, forged = reading(victim, 1), reading(me, 99)
        own = device.publish(mqtt_topic(settings, "climate", me), orjson.dumps(mine))
        spoof_topic = mqtt_topic(settings, "climate", victim)
        spoofed = device.publish(spoof_topic, orjson.dumps(foreign))
        # the payload claims to be the device itself, but the topic is another's: refused by topic alone
        spoofed_self = device.publish(spoof_topic, orjson.dumps(forged))
        sentinel = device.publish(mqtt_topic(settings, "climate", me), orjson.dumps(mine_later))
    finally:
        device.close()
    assert (own, sentinel) == (0, 0)
    assert spoofed == NOT_AUTHORIZED and spoofed_self == NOT_AUTHORIZED

    def ident(r: dict) -> str:
        return reading_id(r["device_id"], r["ts"], r["seq"])

    later = ident(mine_later)
    records = await read_until(settings, settings.topic_readings, lambda recs: later in reading_ids(recs), 60)
    ids = set(reading_ids(records))
    assert {ident(mine), ident(mine_later)} <= ids
    assert ident(foreign) not in ids and ident(forged) not in ids
    dead = await read_until(settings, settings.topic_deadletter, lambda recs: False, 2)
    assert not dead, "the refused publishes never reached the gateway"


@native_only
def test_devices_add_list_remove_live_and_secrets_stay_private(stack_settings, isolated_settings):
    device_id = f"probe-{uuid.uuid4().hex[:6]}"
    password = _add_device(stack_settings, device_id, "power")
    as_device = isolated_settings.model_copy(update={"mqtt_username": device_id, "mqtt_password": password})
    assert broker_accepts(as_device)
    held = Device(as_device)  # a connection the device still holds when it is removed
    try:
        listed = _iotp(stack_settings, "devices", "list")
        assert device_id in listed.stdout and "power" in listed.stdout

        duplicate = _iotp(stack_settings, "devices", "add", device_id)
        assert duplicate.returncode == 1 and "already has credentials" in duplicate.stdout

        auth = LocalStack(stack_settings).mqtt_auth()
        for path in (auth.devices_file, auth.services_file, auth.password_file, auth.acl_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(auth.dir.stat().st_mode) == 0o700
        # the device password is shown once and stored nowhere (only its hash)
        for path in stack_settings.state_dir.rglob("*"):
            if path.is_file():
                assert password not in path.read_text(errors="replace"), f"device password in {path}"

        removed = _iotp(stack_settings, "devices", "remove", device_id)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert _connack(as_device) == NOT_AUTHORIZED
        # Mosquitto re-checks connected clients on reload: the removed device's connection is dropped
        wait_for(lambda: not held.client.is_connected(), 10, message="removed device disconnected")
    finally:
        held.close()
    assert "no device" in _iotp(stack_settings, "devices", "remove", device_id).stdout


def test_bad_device_ids_are_refused(tmp_path):
    auth = MqttAuth(tmp_path, "iotp/telemetry")
    for bad in ("a/b", "dev+", "dev#", "", "x" * 65, "dev:1", GATEWAY):
        with pytest.raises(ValueError):
            auth.add_device(bad)
    assert auth.devices() == []


@native_only
def test_stack_gives_gateway_and_simulator_their_own_accounts(stack_settings):
    """The pipeline programs of ``iotp up``: gateway and simulator connect with their accounts; the
    processes that use no MQTT get no MQTT password."""
    stack = LocalStack(stack_settings)
    programs = {p.name: p for p in stack._pipeline_programs(["--quiet"])}
    for name, account in (("gateway-0", GATEWAY), ("simulator", SIMULATOR)):
        env = programs[name].env
        assert env["IOTP_MQTT_USERNAME"] == account
        creds = {"mqtt_username": account, "mqtt_password": env["IOTP_MQTT_PASSWORD"]}
        assert broker_accepts(stack_settings.model_copy(update=creds)), name
    for name in ("api", "stream-0"):
        assert "IOTP_MQTT_PASSWORD" not in programs[name].env
