"""A lean load generator: the simulator's fleet and readings, published with hand-framed MQTT 3.1.1.

``iotp loadtest`` uses it by default (``--publisher lean``) so that the load test measures the pipeline and
not its own publisher: the simulator's paho client costs several times more CPU per message than the
gateway's share of the budget at 10k messages/s (``benchmarks/publisher_bench.py`` measures both).

What stays the same as the simulator: the devices (:meth:`simulator.scenario.Scenario.build_fleet`: ids,
types, signal models, seq counters), the per-device topic, the payload (one reading object, or a JSON array
of ``batch`` readings of one device) and the absolute pacing schedule (message ``k`` at ``start + k *
batch / rate``, so short stalls are caught up). What is left out: anomalies, malformed payloads, dropouts,
reconnects and TLS; a dropped connection ends the run with an error, as a load test should.

Each process keeps one non-blocking TCP connection, writes whatever is due as one buffer per wake-up and
counts the PUBACKs (QoS 1: ``confirmed`` = readings of acknowledged messages). Several processes
(``workers``) split the fleet and the rate, like the simulator's workers. The stats file has the
simulator's format (:class:`simulator.publisher.PublishStats`).

By default (``prepare=True``) a process builds all of its step's frames before it starts publishing
(:mod:`loadtest.prepared_frames`), and while publishing only copies them out and writes each reading's
``ts`` as the send time: the readings are the same, the publisher's CPU inside the publishing window is
a fraction. The time that takes is ``prepare_s`` in the stats; a step whose frames would not fit in
``max_prepared_mb`` generates them live, as ``prepare=False`` does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
import typer

from iotp import gc_tuning
from iotp.schema import now_ms
from iotp.settings import Settings
from iotp.topics import mqtt_topic
from loadtest.mqtt_frames import DISCONNECT, AckReader, check_connack, connect_packet, publish_packet
from loadtest.prepared_frames import PreparedFrames, prepared_bytes_estimate
from simulator.fleet import Device
from simulator.publisher import PublishStats
from simulator.scenario import Scenario, load_scenario

MAX_BUFFER_BYTES = 4 << 20  # unsent bytes: beyond this the socket is the bottleneck, so stop generating
MAX_INFLIGHT = 60_000  # QoS 1 messages not yet acknowledged (packet ids are 16 bit)
MAX_PER_WAKE = 5_000  # messages generated per wake-up, so acks are read in between
ACK_WAIT_S = 60.0
WAKE_S = 0.002
MAX_PREPARED_MB = 1024  # per process; beyond it the frames are generated while publishing


class LeanPublisher:
    """One connection publishing ``devices`` round robin at ``rate`` readings/s."""

    def __init__(
        self,
        settings: Settings,
        devices: list[Device],
        rate: float,
        *,
        qos: int = 1,
        batch: int = 1,
        client_id: str,
        prepare: bool = True,
        max_prepared_mb: float = MAX_PREPARED_MB,
    ) -> None:
        if settings.mqtt_tls:
            raise ValueError("the lean publisher speaks plain TCP only; use the simulator for TLS brokers")
        if not devices or rate <= 0:
            raise ValueError("need at least one device and a positive rate")
        self.settings = settings
        self.devices = devices
        self.topics = [mqtt_topic(settings, d.device_type, d.device_id).encode() for d in devices]
        self.rate = rate
        self.qos = qos
        self.batch = max(1, batch)
        self.client_id = client_id
        self.prepare = prepare
        self.max_prepared_mb = max_prepared_mb
        self.stats = PublishStats(target_rate=rate)
        self.acks = AckReader()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.settings.mqtt_host, self.settings.mqtt_port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.sendall(connect_packet(self.client_id, self.settings.mqtt_username, self.settings.mqtt_password))
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                raise ConnectionError("the MQTT broker closed the connection before CONNACK")
            connack += chunk
        check_connack(connack)
        sock.setblocking(False)
        return sock

    def _message(self, index: int, interval_ms: float) -> bytes:
        device = self.devices[index % len(self.devices)]
        wall = now_ms()
        if self.batch == 1:
            body = orjson.dumps(device.reading_at(wall))
        else:
            n = self.batch
            body = orjson.dumps([device.reading_at(int(wall - (n - 1 - k) * interval_ms)) for k in range(n)])
        packet_id = index % 65535 + 1
        return publish_packet(self.topics[index % len(self.devices)], body, self.qos, packet_id)

    def prepared(self, duration_s: float) -> PreparedFrames | None:
        """Every frame of a ``duration_s`` run (:mod:`loadtest.prepared_frames`), or None when preparing is
        off or they would take more than ``max_prepared_mb``."""
        msg_rate = self.rate / self.batch
        count = int(duration_s * msg_rate) + 2  # the loop sends at most int(elapsed * msg_rate) + 1
        if not self.prepare or prepared_bytes_estimate(count, self.batch) > self.max_prepared_mb * 1e6:
            return None
        return PreparedFrames(
            self.devices, self.topics, count, msg_rate=msg_rate, start_ms=now_ms(), qos=self.qos, batch=self.batch
        )

    def run(self, duration_s: float, on_tick: Callable[[PublishStats], None] | None = None) -> PublishStats:
        """Publish for ``duration_s``, then wait (up to a minute) for the outstanding PUBACKs. The frames
        are prepared first (:meth:`prepared`), before connecting, so the broker sees no idle connection."""
        prepare_started = time.monotonic()
        frames = self.prepared(duration_s)
        self.stats.prepare_s = round(time.monotonic() - prepare_started, 3) if frames is not None else 0.0
        sock = self._connect()
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        msg_rate = self.rate / self.batch
        interval_ms = 1000.0 * len(self.devices) / self.rate
        out = bytearray()
        sent = 0
        cpu_started = time.process_time()
        started = time.monotonic()
        last_tick = started
        try:
            while True:
                now = time.monotonic()
                elapsed = now - started
                if elapsed >= duration_s:
                    break
                due = min(int(elapsed * msg_rate) + 1 - sent, MAX_PER_WAKE)
                if len(out) > MAX_BUFFER_BYTES or (self.qos and sent - self.acks.acked >= MAX_INFLIGHT):
                    due = 0
                if due > 0 and frames is not None:
                    stop = min(sent + due, len(frames))
                    frames.append_to(out, sent, stop, now_ms())
                    sent = stop
                else:
                    for _ in range(max(0, due)):
                        out += self._message(sent, interval_ms)
                        sent += 1
                if out:
                    out = self._write(sock, out)
                # wake at most every WAKE_S (so each wake-up writes a few dozen messages at 10k/s, not one)
                wait = max(WAKE_S, (sent + 1) / msg_rate - (time.monotonic() - started))
                for _key, _events in selector.select(min(wait, 0.01) if not out else 0.0005):
                    self._read(sock)
                if on_tick and now - last_tick >= 1.0:
                    last_tick = now
                    self._fill(sent, elapsed)
                    on_tick(self.stats)
            end = time.monotonic()
            sock.setblocking(True)
            sock.sendall(out)
            self._fill(sent, end - started)
            self.stats.behind_s = round(max(0.0, (end - started) - sent / msg_rate), 3)
            if self.qos:
                sock.settimeout(1.0)
                deadline = time.monotonic() + ACK_WAIT_S
                while self.acks.acked < sent and time.monotonic() < deadline:
                    try:
                        data = sock.recv(1 << 16)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.acks.feed(data)
            sock.sendall(DISCONNECT)
        finally:
            selector.close()
            sock.close()
        acked = self.acks.acked if self.qos else sent
        self.stats.confirmed = acked * self.batch
        self.stats.unconfirmed_messages = sent - acked
        self.stats.cpu_s = round(time.process_time() - cpu_started, 3)
        self.stats.done = True
        return self.stats

    def _fill(self, sent: int, elapsed: float) -> None:
        self.stats.messages = sent
        self.stats.readings = self.stats.published = sent * self.batch
        self.stats.elapsed = max(elapsed, 1e-9)
        self.stats.confirmed = (self.acks.acked if self.qos else sent) * self.batch

    @staticmethod
    def _write(sock: socket.socket, out: bytearray) -> bytearray:
        try:
            n = sock.send(out)
        except BlockingIOError:
            return out
        del out[:n]
        return out

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError("the MQTT broker closed the connection")
            self.acks.feed(data)


def _publish_part(
    settings: Settings, scenario: Scenario, index: int, workers: int, seq0: int, prepare: bool = True
) -> PublishStats:
    """Publish every ``workers``-th device of the fleet, from the ``index``-th, at their share of the rate."""
    devices = scenario.build_fleet(seq0)[index::workers]
    gc_tuning.tune(settings)
    publisher = LeanPublisher(
        settings,
        devices,
        scenario.total_rate * len(devices) / scenario.fleet.devices,
        qos=scenario.qos,
        batch=scenario.batch,
        client_id=f"iotp-lean-{os.getpid()}-{index}",
        prepare=prepare,
    )
    return publisher.run(scenario.duration_s or 10.0)


def _worker(
    settings: Settings, scenario: Scenario, index: int, workers: int, seq0: int, prepare: bool, results: mp.Queue
) -> None:
    results.put(_publish_part(settings, scenario, index, workers, seq0, prepare).to_dict())


def run_lean(settings: Settings, scenario: Scenario, workers: int = 1, prepare: bool = True) -> PublishStats:
    """Publish the scenario's fleet for its ``duration_s`` from ``workers`` processes (1 = this one)."""
    seq0 = now_ms()
    workers = max(1, min(workers, scenario.fleet.devices))
    if workers == 1:
        return PublishStats.merge([_publish_part(settings, scenario, 0, 1, seq0, prepare)])
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(settings, scenario, i, workers, seq0, prepare, results))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    timeout = (scenario.duration_s or 10.0) + ACK_WAIT_S + 60
    parts = [PublishStats.from_dict(results.get(timeout=timeout)) for _ in procs]
    for proc in procs:
        proc.join(10)
    return PublishStats.merge(parts)


def main(
    scenario: Annotated[Path, typer.Option(help="Scenario YAML (fleet, rate_per_s, duration_s, qos, batch)")],
    stats_json: Annotated[Path, typer.Option(help="Write the publisher's stats here")],
    workers: Annotated[int, typer.Option(min=1, help="Publisher processes")] = 1,
    prepare: Annotated[
        bool, typer.Option(help="Build every frame before publishing (--no-prepare: generate while publishing)")
    ] = True,
) -> None:
    from infra.mqtt_auth import with_local_credentials
    from iotp.settings import get_settings

    settings = with_local_credentials(get_settings(), "simulator")
    stats = run_lean(settings, load_scenario(scenario), workers, prepare)
    stats_json.write_bytes(orjson.dumps(stats.to_dict()))


if __name__ == "__main__":
    typer.run(main)
