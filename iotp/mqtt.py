"""A paho-mqtt client built from the settings (MQTT 5 or 3.1.1, optional credentials and TLS)."""

from __future__ import annotations

import ssl
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from iotp.paho_buffered import BufferedClient
from iotp.settings import Settings


def make_client(
    settings: Settings,
    client_id: str | None = None,
    *,
    clean_start: bool = True,
    manual_ack: bool = False,
    max_inflight: int = 1000,
    protocol: str = "5",
    buffered: bool = False,
) -> mqtt.Client:
    """``protocol`` "5" (default) or "3.1.1"; with 3.1.1 ``clean_start=False`` becomes a persistent session
    (``clean_session=False``), the only kind 3.1.1 has. ``buffered``: a
    :class:`iotp.paho_buffered.BufferedClient`, only for clients driven by :class:`iotp.mqtt_asyncio.AsyncioMqtt`."""
    v5 = protocol == "5"
    client_class = BufferedClient if buffered else mqtt.Client
    client = client_class(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"iotp-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else clean_start,
        manual_ack=manual_ack,
    )
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    if settings.mqtt_tls:
        client.tls_set(
            ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client._iotp_clean_start = clean_start  # type: ignore[attr-defined]  # read by connect()
    return client


def connect(client: mqtt.Client, settings: Settings, session_expiry_s: int = 0) -> None:
    """Connect with MQTT 5 properties: a persistent session when ``session_expiry_s`` > 0 (MQTT 3.1.1: the
    session kind was fixed by :func:`make_client`)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if client.protocol != mqtt.MQTTv5:
        client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        return

    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    client.connect(
        settings.mqtt_host,
        settings.mqtt_port,
        keepalive=30,
        clean_start=getattr(client, "_iotp_clean_start", True),
        properties=props,
    )


def broker_accepts(settings: Settings, timeout: float = 5.0) -> bool:
    """Whether the broker accepts a connection with the settings' credentials (CONNACK success)."""
    import threading

    result: dict[str, bool] = {}
    done = threading.Event()
    client = make_client(settings)

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason_code: ReasonCode, properties: object
    ) -> None:
        result["ok"] = not reason_code.is_failure
        done.set()

    client.on_connect = on_connect
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    try:
        connect(client, settings)
    except OSError:
        return False
    client.loop_start()
    try:
        done.wait(timeout)
        return result.get("ok", False)
    finally:
        client.disconnect()
        client.loop_stop()
