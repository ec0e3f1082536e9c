"""The gateway process: MQTT (shared subscription, manual ack) -> validation -> Kafka.

At least once, end to end: a QoS 1 message is acknowledged to the MQTT broker only after Kafka has
acknowledged every record that carries its readings (or, for a reject, the dead-letter record). A killed
gateway therefore never acked what it had not forwarded, and the broker redelivers it.

One thread: the paho client runs on the asyncio event loop (``iotp.mqtt_asyncio``), so every message is
handled where it is read, with no hand-off between paho's network thread and the loop (measured: that
hand-off capped one process at about 3k messages/s, see docs/performance.md). At most
``gateway_max_inflight`` messages are taken and not yet acked: when the window is full the gateway stops
reading the MQTT socket, TCP fills, and the broker holds the backlog (backpressure).

Reconnects: the MQTT connection is re-established with exponential backoff and, with the persistent
session of a STABLE client id, the broker redelivers what was not acked; Kafka sends are retried with
exponential backoff until they succeed (nothing is acked meanwhile, so the window fills and MQTT reading
pauses). A second process with the same client id takes the session over: the gateway then exits with an
error instead of fighting for it; and since Mosquitto 2.0.11 does not send that reason code, a gateway
first takes a lease on its client id in Redis (:mod:`gateway.client_lease`) and exits (code 3) if another
live gateway holds it.

Record mode (``IOTP_KAFKA_RECORD_MODE``): ``device`` (default) sends one record per device per linger
window, key = device id. ``partition`` groups the pending device batches by the partition each device id
maps to under Kafka's default partitioner (:func:`iotp.kafka.partition_for`, partition count from the
producer's cluster metadata) and sends one :class:`iotp.schema.PartitionBatch` per partition per window
with an explicit partition: a device always lands in the same partition as in device mode, and its
records are sent in order, so per-device order is unchanged; the stream job pays its per-record cost once
for many devices.

Counters go to Prometheus (``gateway.metrics``) and, about once a second, to the Redis stats hash
(``gateway.received``/``forwarded``/``rejected``: MQTT messages / readings / MQTT messages;
``gateway.backfill``: readings accepted as backfill, older than the live skew).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka.errors import KafkaError
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.reasoncodes import ReasonCode
from redis.exceptions import RedisError

from gateway import metrics
from gateway.client_lease import ClientIdLease, LeaseHeld
from gateway.validation import Limits, Rejected, is_backfill, topic_device_id, validate_payload
from iotp import paho_speedups
from iotp.kafka import make_producer, partition_for
from iotp.mqtt import connect, make_client
from iotp.mqtt_asyncio import AsyncioMqtt
from iotp.profile_store import ProfileWatcher, settings_fallback
from iotp.retry import Backoff, retry_forever
from iotp.schema import encode_batch, encode_partition_batch, now_ms, order_of, reading_id
from iotp.settings import Settings
from iotp.topics import mqtt_subscription, redis_names

log = logging.getLogger("iotp.gateway")

MAX_READINGS_PER_RECORD = 500
MAX_READINGS_PER_PARTITION_RECORD = 2000  # partition mode: ~0.3-0.5 MB, under Kafka's 1 MB default uncompressed
SESSION_EXPIRY_S = 3600
SEND_BACKOFF = Backoff(0.1, 5.0)  # a record send: its readings stay unacked on MQTT until it succeeds
START_BACKOFF = Backoff(0.5, 10.0)  # the producer's first connection


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


TAKEN_OVER = 142  # MQTT 5 reason code "Session taken over"


def default_client_id(index: int = 0) -> str:
    """Stable per host and instance index, so a restarted gateway resumes its persistent session."""
    return f"iotp-gateway-{socket.gethostname()}-{index}"


class Gateway:
    def __init__(
        self,
        settings: Settings,
        client_id: str | None = None,
        *,
        stats_interval_s: float = 1.0,
        redis_stats: bool = True,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or default_client_id()
        skew_ms = int(settings.gateway_max_skew_s * 1000)
        self.limits = Limits(
            settings.gateway_max_payload_bytes,
            skew_ms,
            max_backfill_ms=max(skew_ms, int(settings.gateway_max_backfill_s * 1000)),
        )
        self.max_inflight = settings.gateway_max_inflight
        self.resume_below = int(self.max_inflight * 0.8)
        self.pending: dict[str, DeviceBatch] = {}
        self.partition_mode = settings.kafka_record_mode == "partition"
        self.partition_count = 0  # partition mode: of the readings topic, from the producer's metadata
        self.partition_of: dict[str, int] = {}  # device id -> partition (murmur2 is pure Python: cached)
        self.inflight = 0
        self.exit_code = 0
        self.sends: set[asyncio.Task] = set()
        self.stopping: asyncio.Event | None = None
        self.mqtt: AsyncioMqtt | None = None
        self.counts = {"received": 0, "forwarded": 0, "rejected": 0, "records": 0, "backfill": 0}
        self._received_seen = 0  # of counts["received"], already added to the Prometheus counter
        self.stats_interval_s = stats_interval_s
        self.redis_stats = redis_stats
        # Device profiles: the file ones until Redis answers, then the live ones (reloaded on change).
        self.profiles = settings_fallback(settings)
        self.unknown_type = settings.unknown_device_type
        self.watcher: ProfileWatcher | None = None

    # ------------------------------------------------------------ MQTT callbacks (event loop)
    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: ConnectFlags, reason_code: ReasonCode, properties: object
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        metrics.MQTT_RECONNECTS.inc()
        client.subscribe(mqtt_subscription(self.settings), qos=1)
        log.info(
            "MQTT %s connected as %s (session present=%s), subscribed",
            self.settings.gateway_mqtt_protocol,
            self.client_id,
            flags.session_present,
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if self.stopping is None or self.stopping.is_set():
            return
        if getattr(reason_code, "value", None) == TAKEN_OVER:
            log.error(
                "another client connected with MQTT client id %r and took the session over; give each "
                "gateway its own --client-id or --index. Exiting.",
                self.client_id,
            )
            self.exit_code = 3
            self.stopping.set()
            return
        log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._handle(msg)
        if self.inflight >= self.max_inflight and self.mqtt is not None:
            self.mqtt.pause_reading()

    # ------------------------------------------------------------ forwarding
    def _ack(self, ticket: Ticket) -> None:
        if ticket.msg.qos > 0:
            self.client.ack(ticket.msg.mid, ticket.msg.qos)
        self.inflight -= 1
        if self.mqtt is not None and self.mqtt.paused and self.inflight <= self.resume_below:
            self.mqtt.resume_reading()

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        self.counts["received"] += 1
        self.inflight += 1
        rx_ms = now_ms()
        try:
            readings = validate_payload(
                msg.payload, rx_ms, self.limits, topic_device_id(msg.topic), self.profiles, self.unknown_type
            )
        except Rejected as rej:
            metrics.REJECTED.labels(rej.reason.value).inc()
            self.counts["rejected"] += 1
            self._spawn(self._dead_letter(msg, rej, rx_ms))
            return
        ticket = Ticket(msg, len(readings))
        for r in readings:
            batch = self.pending.get(r.device_id)
            if batch is None:
                batch = self.pending[r.device_id] = DeviceBatch(r.device_type)
            key = r.key
            item = {
                "id": reading_id(r.device_id, r.ts, key),
                "seq": r.seq,
                "ts": r.ts,
                "rx": rx_ms,
                "metrics": r.metrics,
            }
            if r.seq is None:
                item["k"] = key
            if is_backfill(r.ts, rx_ms, self.limits):
                item["bf"] = True
                self.counts["backfill"] += 1
            batch.readings.append(item)
            batch.tickets.append(ticket)
            if len(batch.readings) >= MAX_READINGS_PER_RECORD:
                self._flush_device(r.device_id)
        if self.settings.gateway_linger_ms == 0:
            self.flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.sends.add(task)
        task.add_done_callback(self.sends.discard)

    def flush(self) -> None:
        if self.partition_mode and self.partition_count:
            self._flush_partitions(list(self.pending))
            return
        for device_id in list(self.pending):
            self._flush_device(device_id)

    def _flush_device(self, device_id: str) -> None:
        if self.partition_mode and self.partition_count:
            self._flush_partitions([device_id])
            return
        batch = self.pending.pop(device_id)
        batch.readings.sort(key=order_of)
        value = encode_batch(device_id, batch.device_type, batch.readings)
        self._spawn(self._send(device_id, value, batch))

    def _partition(self, device_id: str) -> int:
        p = self.partition_of.get(device_id)
        if p is None:
            p = self.partition_of[device_id] = partition_for(device_id.encode(), self.partition_count)
        return p

    def _flush_partitions(self, device_ids: list[str]) -> None:
        """Partition mode: one record per partition (split at MAX_READINGS_PER_PARTITION_RECORD readings,
        a device batch never split) with the device batches of ``device_ids``."""
        groups: dict[int, list[tuple[bytes, DeviceBatch]]] = {}
        sizes: dict[int, int] = {}
        for device_id in device_ids:
            batch = self.pending.pop(device_id)
            batch.readings.sort(key=order_of)
            p = self._partition(device_id)
            if sizes.get(p, 0) + len(batch.readings) > MAX_READINGS_PER_PARTITION_RECORD and groups.get(p):
                self._send_partition(p, groups.pop(p))
                sizes[p] = 0
            groups.setdefault(p, []).append((encode_batch(device_id, batch.device_type, batch.readings), batch))
            sizes[p] = sizes.get(p, 0) + len(batch.readings)
        for p, items in groups.items():
            self._send_partition(p, items)

    def _send_partition(self, partition: int, items: list[tuple[bytes, DeviceBatch]]) -> None:
        value = encode_partition_batch([encoded for encoded, _ in items])
        self._spawn(self._send_record(None, partition, value, [batch for _, batch in items]))

    async def _refresh_partitions(self) -> None:
        """Partition mode: the readings topic's partition count from the producer's cluster metadata (a
        change re-maps devices, as it would re-map device keys)."""
        if not self.partition_mode:
            return
        try:
            count = len(await asyncio.wait_for(self.producer.partitions_for(self.settings.topic_readings), 10))
        except (TimeoutError, KafkaError) as exc:
            log.warning("no partition metadata for %s yet (%s)", self.settings.topic_readings, exc)
            return
        if count != self.partition_count:
            if self.partition_count:
                log.warning("readings topic now has %d partitions (was %d)", count, self.partition_count)
            self.partition_count = count
            self.partition_of.clear()

    async def _send_with_retry(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        async def attempt() -> None:
            started = time.perf_counter()
            fut = await self.producer.send(topic, value=value, key=key, headers=headers, partition=partition)
            await fut
            metrics.KAFKA_LATENCY.observe(time.perf_counter() - started)

        await retry_forever(
            attempt,
            what="Kafka send failed",
            retry_on=KafkaError,
            backoff=SEND_BACKOFF,
            log=log,
            on_retry=lambda _exc, _delay: metrics.KAFKA_ERRORS.inc(),
        )

    async def _send(self, device_id: str, value: bytes, batch: DeviceBatch) -> None:
        await self._send_record(device_id.encode(), None, value, [batch])

    async def _send_record(
        self, key: bytes | None, partition: int | None, value: bytes, batches: list[DeviceBatch]
    ) -> None:
        await self._send_with_retry(self.settings.topic_readings, value, key, partition=partition)
        n = sum(len(batch.readings) for batch in batches)
        metrics.RECORDS_SENT.inc()
        metrics.READINGS_FORWARDED.inc(n)
        self.counts["forwarded"] += n
        self.counts["records"] += 1
        for batch in batches:
            for ticket in batch.tickets:
                ticket.outstanding -= 1
                if ticket.outstanding == 0:
                    self._ack(ticket)

    async def _dead_letter(self, msg: mqtt.MQTTMessage, rej: Rejected, rx_ms: int) -> None:
        headers = [
            ("reason", rej.reason.value.encode()),
            ("detail", rej.detail.encode()[:1000]),
            ("mqtt_topic", msg.topic.encode()),
            ("received_ms", str(rx_ms).encode()),
        ]
        key = rej.device_id.encode() if rej.device_id else None
        await self._send_with_retry(self.settings.topic_deadletter, bytes(msg.payload), key, headers)
        self._ack(Ticket(msg, 0))

    # ---------------------------------------------------------------- run
    async def run(self, ready: asyncio.Event | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``stopping``); returns the process exit code."""
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (tests)
                loop.add_signal_handler(sig, self.stopping.set)
        lease = await self._take_client_id()
        if lease is None:
            return self.exit_code
        lease_task = asyncio.ensure_future(self._keep_client_id(lease))
        if self.settings.gateway_mqtt_protocol == "5" and self.settings.mqtt_shared_property_tables:
            paho_speedups.install()
        self.producer = make_producer(self.settings)
        await self._start_producer()
        await self._refresh_partitions()
        profiles_task = await self._start_profiles()
        self.client = make_client(
            self.settings,
            self.client_id,
            clean_start=False,
            manual_ack=True,
            max_inflight=min(self.max_inflight, 65535),
            protocol=self.settings.gateway_mqtt_protocol,
            buffered=self.settings.gateway_mqtt_buffered,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.mqtt = AsyncioMqtt(
            self.client, lambda: connect(self.client, self.settings, session_expiry_s=SESSION_EXPIRY_S)
        )
        await self.mqtt.connect()
        stats_task = asyncio.ensure_future(self._publish_stats()) if self.redis_stats else None
        flusher = asyncio.ensure_future(self._flush_loop())
        if ready:
            ready.set()
        try:
            await self.stopping.wait()
            await self._drain()
        finally:
            flusher.cancel()
            lease_task.cancel()
            await lease.release()
            with contextlib.suppress(Exception):
                await lease.redis.aclose()
            profiles_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await profiles_task
            if self.watcher is not None:
                with contextlib.suppress(Exception):
                    await self.watcher.store.redis.aclose()
            await self.mqtt.close()
            await self.producer.stop()
            if stats_task is not None:
                stats_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stats_task
                await self._flush_stats()
                with contextlib.suppress(Exception):
                    await self._redis.aclose()
        return self.exit_code

    async def _take_client_id(self) -> ClientIdLease | None:
        """The lease on our MQTT client id (:mod:`gateway.client_lease`); None = another live gateway holds
        it, and this one must exit (code 3) before it takes that gateway's MQTT session."""
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        lease = ClientIdLease(client, redis_names(self.settings).gateway_client_lease(self.client_id))
        try:
            await lease.acquire()
        except LeaseHeld as held:
            log.error(
                "another gateway (%s) is running with MQTT client id %r; give each gateway its own "
                "--client-id or --index. Exiting.",
                held.holder,
                self.client_id,
            )
            self.exit_code = 3
            await client.aclose()
            return None
        except (RedisError, OSError) as exc:
            log.warning("Redis unreachable (%s): running without the client id lease, will keep trying", exc)
        return lease

    async def _keep_client_id(self, lease: ClientIdLease) -> None:
        lost = asyncio.Event()
        await lease.keep(lost)
        if lost.is_set() and self.stopping is not None:
            log.error(
                "another gateway now holds the lease on MQTT client id %r; give each gateway its own "
                "--client-id or --index. Exiting.",
                self.client_id,
            )
            self.exit_code = 3
            self.stopping.set()

    async def _start_profiles(self) -> asyncio.Task:
        """Load the live device profiles once before taking messages, then poll for changes."""
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.watcher = ProfileWatcher(
            client,
            redis_names(self.settings),
            self.profiles,
            self.settings.profiles_poll_s,
            on_change=self._profiles_changed,
        )
        await self.watcher.try_refresh()
        return asyncio.ensure_future(self.watcher.run())

    def _profiles_changed(self, profiles: dict) -> None:
        self.profiles = profiles
        version = self.watcher.version if self.watcher is not None else None
        log.info("device profiles loaded (version %s): %s", version, ", ".join(sorted(profiles)))

    async def _flush_loop(self) -> None:
        """Send what each device collected, every linger period."""
        linger = max(self.settings.gateway_linger_ms, 1) / 1000
        while True:
            await asyncio.sleep(linger)
            metrics.RECEIVED.inc(self.counts["received"] - self._received_seen)
            self._received_seen = self.counts["received"]
            metrics.INFLIGHT.set(self.inflight)
            if self.partition_mode:
                await self._refresh_partitions()
            self.flush()

    async def _drain(self) -> None:
        """SIGTERM: stop taking messages, forward and ack what was taken, then leave."""
        log.info("draining: %d in flight", self.inflight)
        if self.mqtt is not None:
            self.mqtt.pause_reading()
        with contextlib.suppress(Exception):
            self.client.unsubscribe(mqtt_subscription(self.settings))
        self.flush()
        if self.sends:
            await asyncio.wait(list(self.sends), timeout=30)
        log.info("drained")

    # ------------------------------------------------------------ Redis stats
    async def _publish_stats(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._published = dict.fromkeys(self.counts, 0)
        while True:
            await asyncio.sleep(self.stats_interval_s)
            await self._flush_stats()

    async def _flush_stats(self) -> None:
        """HINCRBY the deltas since the last flush; on a Redis error they are kept for the next one."""
        client = getattr(self, "_redis", None)
        if client is None:
            return
        deltas = {k: v - self._published[k] for k, v in self.counts.items() if v != self._published[k]}
        key = redis_names(self.settings).stats_key
        try:
            pipe = client.pipeline(transaction=False)
            for name, delta in deltas.items():
                pipe.hincrby(key, f"gateway.{name}", delta)
            pipe.hset(key, "gateway.updated_ms", now_ms())
            await pipe.execute()
        except Exception as exc:  # Redis down must not stop forwarding
            metrics.REDIS_ERRORS.inc()
            log.warning("Redis stats update failed (%s); will retry", exc)
            return
        for name, delta in deltas.items():
            self._published[name] += delta

    async def _start_producer(self) -> None:
        await retry_forever(
            self.producer.start, what="Kafka not reachable", retry_on=KafkaError, backoff=START_BACKOFF, log=log
        )
