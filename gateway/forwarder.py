"""The gateway process: MQTT (shared subscription, manual ack) -> validation -> Kafka.

At least once, end to end: a QoS 1 message is acknowledged to the MQTT broker only after Kafka has
acknowledged every record that carries its readings (or, for a reject, the dead-letter record). A killed
gateway therefore never acked what it had not forwarded, and the broker redelivers it.

Threads: paho runs its network loop in its own thread and hands messages to the asyncio loop. A bounded
semaphore of ``gateway_max_inflight`` slots is taken in the paho thread before a message is handed over
and given back when it is acked; when it is exhausted the paho thread blocks, stops reading its socket,
and the MQTT broker holds the backlog (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from aiokafka.errors import KafkaError

from gateway import metrics
from gateway.validation import Limits, Rejected, topic_device_id, validate_payload
from iotp.kafka import make_producer
from iotp.mqtt import connect, make_client
from iotp.schema import encode_batch
from iotp.settings import Settings
from iotp.topics import mqtt_subscription

log = logging.getLogger("iotp.gateway")

MAX_READINGS_PER_RECORD = 500
SESSION_EXPIRY_S = 3600


@dataclass(slots=True)
class Ticket:
    """One MQTT message waiting for the Kafka acks of all its readings."""

    msg: mqtt.MQTTMessage
    outstanding: int


@dataclass(slots=True)
class DeviceBatch:
    device_type: str
    readings: list[dict] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)


class Gateway:
    def __init__(self, settings: Settings, client_id: str | None = None) -> None:
        self.settings = settings
        self.client_id = client_id or f"iotp-gateway-{socket.gethostname()}"
        self.limits = Limits(settings.gateway_max_payload_bytes, int(settings.gateway_max_skew_s * 1000))
        self.slots = threading.BoundedSemaphore(settings.gateway_max_inflight)
        self.pending: dict[str, DeviceBatch] = {}
        self.inflight = 0
        self.stopping = threading.Event()
        self.sends: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[mqtt.MQTTMessage] | None = None

    # ------------------------------------------------------------ paho thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect failed: %s", reason_code)
            return
        metrics.MQTT_RECONNECTS.inc()
        client.subscribe(mqtt_subscription(self.settings), qos=1)
        log.info("MQTT connected (session present=%s), subscribed", flags.session_present)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        while not self.slots.acquire(timeout=0.5):
            if self.stopping.is_set():
                return  # not acked: the broker redelivers it to the next session
        assert self.loop is not None and self.queue is not None
        self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)

    # ------------------------------------------------------------ asyncio side
    def _ack(self, ticket: Ticket) -> None:
        if ticket.msg.qos > 0:
            self.client.ack(ticket.msg.mid, ticket.msg.qos)
        self.inflight -= 1
        metrics.INFLIGHT.set(self.inflight)
        self.slots.release()

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        metrics.RECEIVED.inc()
        self.inflight += 1
        metrics.INFLIGHT.set(self.inflight)
        now_ms = int(time.time() * 1000)
        try:
            readings = validate_payload(msg.payload, now_ms, self.limits, topic_device_id(msg.topic))
        except Rejected as rej:
            metrics.REJECTED.labels(rej.reason.value).inc()
            self._spawn(self._dead_letter(msg, rej, now_ms))
            return
        ticket = Ticket(msg, len(readings))
        for r in readings:
            batch = self.pending.get(r.device_id)
            if batch is None:
                batch = self.pending[r.device_id] = DeviceBatch(r.device_type)
            batch.readings.append({"id": f"{r.device_id}:{r.seq}", "seq": r.seq, "ts": r.ts, "rx": now_ms,
                                   "metrics": r.metrics})
            batch.tickets.append(ticket)
            if len(batch.readings) >= MAX_READINGS_PER_RECORD:
                self._flush_device(r.device_id)
        if self.settings.gateway_linger_ms == 0:
            self.flush()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.sends.add(task)
        task.add_done_callback(self.sends.discard)

    def flush(self) -> None:
        for device_id in list(self.pending):
            self._flush_device(device_id)

    def _flush_device(self, device_id: str) -> None:
        batch = self.pending.pop(device_id)
        batch.readings.sort(key=lambda r: r["seq"])
        value = encode_batch(device_id, batch.device_type, batch.readings)
        self._spawn(self._send(device_id, value, batch))

    async def _send_with_retry(self, topic: str, value: bytes, key: bytes | None,
                               headers: list[tuple[str, bytes]] | None = None) -> None:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                fut = await self.producer.send(topic, value=value, key=key, headers=headers)
                await fut
                metrics.KAFKA_LATENCY.observe(time.perf_counter() - started)
                return
            except KafkaError as exc:
                metrics.KAFKA_ERRORS.inc()
                log.warning("Kafka send failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _send(self, device_id: str, value: bytes, batch: DeviceBatch) -> None:
        await self._send_with_retry(self.settings.topic_readings, value, device_id.encode())
        metrics.RECORDS_SENT.inc()
        metrics.READINGS_FORWARDED.inc(len(batch.readings))
        for ticket in batch.tickets:
            ticket.outstanding -= 1
            if ticket.outstanding == 0:
                self._ack(ticket)

    async def _dead_letter(self, msg: mqtt.MQTTMessage, rej: Rejected, now_ms: int) -> None:
        headers = [("reason", rej.reason.value.encode()), ("detail", rej.detail.encode()[:1000]),
                   ("mqtt_topic", msg.topic.encode()), ("received_ms", str(now_ms).encode())]
        key = rej.device_id.encode() if rej.device_id else None
        await self._send_with_retry(self.settings.topic_deadletter, bytes(msg.payload), key, headers)
        self._ack(Ticket(msg, 0))

    # ---------------------------------------------------------------- run
    async def run(self, ready: asyncio.Event | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (tests)
                self.loop.add_signal_handler(sig, self.stopping.set)
        self.producer = make_producer(self.settings)
        await self._start_producer()
        self.client = make_client(self.settings, self.client_id, clean_start=False, manual_ack=True,
                                  max_inflight=min(self.settings.gateway_max_inflight, 65535))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        await self._connect_mqtt()
        self.client.loop_start()
        if ready:
            ready.set()
        linger = max(self.settings.gateway_linger_ms, 1) / 1000
        last_flush = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    msg = await asyncio.wait_for(self.queue.get(), timeout=linger)
                    self._handle(msg)
                    while not self.queue.empty():
                        self._handle(self.queue.get_nowait())
                except TimeoutError:
                    pass
                if time.monotonic() - last_flush >= linger:
                    self.flush()
                    last_flush = time.monotonic()
            await self._drain()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            await self.producer.stop()

    async def _drain(self) -> None:
        """SIGTERM: stop taking messages, forward and ack what was taken, then leave."""
        log.info("draining: %d in flight", self.inflight)
        self.client.unsubscribe(mqtt_subscription(self.settings))
        while not self.queue.empty():
            self._handle(self.queue.get_nowait())
        self.flush()
        if self.sends:
            await asyncio.wait(list(self.sends), timeout=30)
        log.info("drained")

    async def _start_producer(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.producer.start()
                return
            except KafkaError as exc:
                log.warning("Kafka not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _connect_mqtt(self) -> None:
        delay = 0.5
        while True:
            try:
                connect(self.client, self.settings, session_expiry_s=SESSION_EXPIRY_S)
                return
            except OSError as exc:
                log.warning("MQTT not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
