"""Publish fleet readings over MQTT at a target rate, in one or several worker processes.

Pacing: the worker walks its devices round robin and publishes message ``k`` at ``start + k * batch /
rate`` (an absolute schedule, so short stalls are caught up and the long-run rate is exact). A message
carries ``batch`` readings of one device (a JSON array when ``batch`` > 1) with sensor timestamps one
device interval apart, as a buffering device would send them. When the machine cannot keep up, the
schedule runs behind: ``behind_s`` grows, and the live view and the summary show achieved vs target.

Rates are in READINGS per second (messages per second = rate / batch).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from iotp import gc_tuning
from iotp.mqtt import connect, make_client
from iotp.profiles import Profiles, parse_profile
from iotp.schema import now_ms
from iotp.settings import Settings
from iotp.topics import mqtt_topic
from simulator.anomalies import AnomalyInjector
from simulator.fleet import Device
from simulator.malformed import random_corruption
from simulator.scenario import Scenario
from simulator.stream import emit


@dataclass
class PublishOptions:
    qos: int = 0
    batch: int = 1
    malformed_fraction: float = 0.0
    truth_file: str | None = None
    client_id: str | None = None
    persistent: bool = False
    session_expiry_s: int = 3600


@dataclass
class PublishStats:
    target_rate: float = 0.0  # readings/s
    readings: int = 0  # readings generated (published, suppressed by dropout, or corrupted)
    published: int = 0  # good readings published
    confirmed: int = 0  # good readings whose message the broker acknowledged (QoS 1; = published at QoS 0)
    unconfirmed_messages: int = 0  # QoS 1 messages still unacknowledged when the publisher gave up waiting
    messages: int = 0  # MQTT messages published (good and malformed)
    malformed: int = 0  # malformed messages published
    suppressed: int = 0  # readings not published because the device was in a dropout
    errors: int = 0  # publish calls the client refused
    reconnects: int = 0
    behind_s: float = 0.0  # how far the schedule is behind the clock
    elapsed: float = 0.0
    cpu_s: float = 0.0  # CPU time (user + sys) of the publishing loop itself, summed over workers
    prepare_s: float = 0.0  # time spent building the messages before publishing (the lean publisher's frames)
    anomalies: int = 0  # anomalies recorded in the ground truth
    workers: int = 1
    done: bool = False
    worker_rates: list[float] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        return self.readings / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def keeping_up(self) -> bool:
        return self.target_rate <= 0 or self.achieved_rate >= 0.98 * self.target_rate or self.behind_s < 0.5

    # legacy name
    @property
    def sent(self) -> int:
        return self.messages

    def to_dict(self) -> dict:
        data = asdict(self)
        data["achieved_rate"] = round(self.achieved_rate, 3)
        data["keeping_up"] = self.keeping_up
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PublishStats:
        """The stats a worker process sent as :meth:`to_dict` (the derived keys are dropped)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def merge(cls, parts: list[PublishStats]) -> PublishStats:
        total = cls(workers=len(parts))
        for p in parts:
            for name in (
                "target_rate",
                "readings",
                "published",
                "confirmed",
                "unconfirmed_messages",
                "messages",
                "malformed",
                "suppressed",
                "errors",
                "reconnects",
                "anomalies",
                "cpu_s",
            ):
                setattr(total, name, getattr(total, name) + getattr(p, name))
            total.behind_s = max(total.behind_s, p.behind_s)
            total.elapsed = max(total.elapsed, p.elapsed)
            total.prepare_s = max(total.prepare_s, p.prepare_s)
        total.done = all(p.done for p in parts) if parts else False
        total.worker_rates = [round(p.achieved_rate, 1) for p in parts]
        return total


def _split_count(count: int | None, index: int, workers: int) -> int | None:
    if count is None:
        return None
    return count // workers + (1 if index < count % workers else 0)


class _Acks:
    """QoS 1 accounting: message id -> good readings it carries, until its PUBACK. The PUBACK can be handled
    (paho's network thread) before publish() returned the id to us, hence ``acked_early`` and the lock."""

    def __init__(self, stats: PublishStats) -> None:
        self.stats = stats
        self.pending: dict[int, int] = {}
        self.acked_early: set[int] = set()
        self.lock = threading.Lock()

    def on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason_code: object, properties: object
    ) -> None:
        with self.lock:
            good = self.pending.pop(mid, None)
            if good is None:
                self.acked_early.add(mid)
            else:
                self.stats.confirmed += good

    def sent(self, mid: int, good: int) -> None:
        """``publish()`` returned ``mid`` for a message carrying ``good`` readings."""
        with self.lock:
            if mid in self.acked_early:
                self.acked_early.discard(mid)
                self.stats.confirmed += good
            else:
                self.pending[mid] = good


def _connect(settings: Settings, opts: PublishOptions, stats: PublishStats, acks: _Acks | None) -> mqtt.Client:
    """A connected client with paho's network thread running (reconnects are counted in ``stats``)."""
    client = make_client(settings, opts.client_id, clean_start=not opts.persistent)
    connected = threading.Event()

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason_code: Any, properties: object) -> None:
        if not reason_code.is_failure:
            if connected.is_set():
                stats.reconnects += 1
            connected.set()

    client.on_connect = on_connect
    if acks is not None:
        client.on_publish = acks.on_publish
    connect(client, settings, session_expiry_s=opts.session_expiry_s if opts.persistent else 0)
    client.loop_start()
    if not connected.wait(15):
        client.loop_stop()
        raise ConnectionError(
            f"MQTT broker {settings.mqtt_host}:{settings.mqtt_port} did not accept the connection within 15 s"
        )
    return client


def _readings(
    device: Device, n: int, interval_ms: float, injector: AnomalyInjector | None, stats: PublishStats
) -> list[dict]:
    """The next ``n`` readings of ``device``, sensor timestamps ``interval_ms`` apart ending now; readings of
    a device in a dropout are counted as suppressed."""
    wall_ms = now_ms()
    readings = []
    for k in range(n):
        r = emit(device, int(wall_ms - (n - 1 - k) * interval_ms), injector)
        if r is None:
            stats.suppressed += 1
        else:
            readings.append(r)
    stats.readings += n
    return readings


def _payload(
    readings: list[dict], batch: int, opts: PublishOptions, rng: random.Random, max_bytes: int, stats: PublishStats
) -> tuple[bytes, int]:
    """The message body and how many good readings it carries (0 for a deliberately malformed one)."""
    if opts.malformed_fraction and rng.random() < opts.malformed_fraction:
        stats.malformed += 1
        return random_corruption(readings[0], rng, max_bytes), 0
    stats.published += len(readings)
    return orjson.dumps(readings[0] if batch == 1 else readings), len(readings)


def _close(client: mqtt.Client, qos: int, stats: PublishStats) -> None:
    """Flush the socket and wait (up to 60 s) for the outstanding PUBACKs, then disconnect."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (client.want_write() or (qos and client._out_messages)):
        time.sleep(0.01)
    stats.unconfirmed_messages = len(client._out_messages) if qos else 0
    client.disconnect()
    client.loop_stop()


def run_publisher(
    settings: Settings,
    devices: list[Device],
    rate: float,
    *,
    qos: int = 0,
    duration: float | None = None,
    count: int | None = None,
    on_tick: Callable[[PublishStats], None] | None = None,
    options: PublishOptions | None = None,
    injector: AnomalyInjector | None = None,
    stop: threading.Event | None = None,
    seed: int | None = None,
    tick_s: float = 1.0,
) -> PublishStats:
    """Publish ``devices`` round robin at ``rate`` readings/s until ``duration``/``count``/``stop``."""
    opts = options or PublishOptions(qos=qos)
    qos = opts.qos
    batch = max(1, opts.batch)
    stop = stop or threading.Event()
    stats = PublishStats(target_rate=rate)
    rng = random.Random(f"{seed}:malformed:{devices[0].device_id if devices else ''}")
    acks = _Acks(stats) if qos else None
    client = _connect(settings, opts, stats, acks)
    cpu_started = time.process_time()

    topics = {d.device_id: mqtt_topic(settings, d.device_type, d.device_id) for d in devices}
    device_interval_ms = 1000.0 * len(devices) / rate
    msg_interval = batch / rate
    started = time.monotonic()
    next_at = started
    last_tick = started
    i = 0
    out_packets = getattr(client, "_out_packet", None)  # paho's write queue, to bound memory at max rate
    try:
        while not stop.is_set():
            now = time.monotonic()
            if (duration is not None and now - started >= duration) or (count is not None and stats.readings >= count):
                break
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            if out_packets is not None and len(out_packets) > 20000:
                time.sleep(0.001)  # the socket is the bottleneck: do not queue without bound
                continue
            device = devices[i % len(devices)]
            i += 1
            n = batch if count is None else min(batch, count - stats.readings)
            readings = _readings(device, n, device_interval_ms, injector, stats)
            next_at += msg_interval * n / batch
            if readings:
                payload, good = _payload(readings, batch, opts, rng, settings.gateway_max_payload_bytes, stats)
                info = client.publish(topics[device.device_id], payload, qos=qos)
                if acks is not None:
                    acks.sent(info.mid, good)
                else:
                    stats.confirmed += good
                stats.messages += 1
                if info.rc != mqtt.MQTT_ERR_SUCCESS and not (qos and info.rc == mqtt.MQTT_ERR_NO_CONN):
                    stats.errors += 1
            if now - last_tick >= tick_s:
                last_tick = now
                stats.elapsed = now - started
                stats.behind_s = max(0.0, now - next_at)
                stats.anomalies = len(injector.truth) if injector else 0
                if on_tick:
                    on_tick(stats)
    finally:
        end = time.monotonic()
        _close(client, qos, stats)
        if injector is not None:
            injector.close(now_ms())
    stats.elapsed = max(end - started, 1e-9)
    stats.cpu_s = round(time.process_time() - cpu_started, 3)
    stats.behind_s = max(0.0, end - next_at)
    stats.anomalies = len(injector.truth) if injector else 0
    stats.done = True
    return stats


# ------------------------------------------------------------------ scenario runs (1..N workers)
def _run_part(
    settings: Settings,
    scenario: Scenario,
    options: PublishOptions,
    index: int,
    workers: int,
    seq0: int,
    start_ms: int,
    stop: threading.Event,
    on_tick: Callable[[PublishStats], None] | None,
    tick_s: float,
    profiles: Profiles | None = None,
) -> PublishStats:
    fleet = scenario.build_fleet(seq0, profiles)
    mine = fleet[index::workers]
    if not mine:
        return PublishStats(done=True)
    injector = AnomalyInjector(
        seed=scenario.seed,
        rate_per_device_hour=scenario.anomalies.rate_per_device_hour,
        kinds=scenario.anomalies.kinds,
        schedule=scenario.resolved_schedule(fleet),
        start_ms=start_ms,
        truth_file=options.truth_file,
        profiles=profiles,
    )
    opts = PublishOptions(**{**asdict(options)})
    if opts.client_id and workers > 1:
        opts.client_id = f"{opts.client_id}-w{index}"
    rate = scenario.total_rate * len(mine) / len(fleet)
    return run_publisher(
        settings,
        mine,
        rate,
        duration=scenario.duration_s,
        count=_split_count(scenario.count, index, workers),
        on_tick=on_tick,
        options=opts,
        injector=injector,
        stop=stop,
        seed=scenario.seed,
        tick_s=tick_s,
    )


def _worker_main(
    settings_json: str,
    scenario_json: str,
    options: dict,
    index: int,
    workers: int,
    seq0: int,
    start_ms: int,
    out: mp.Queue,
    profiles_json: bytes | None = None,
) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = Settings.model_validate_json(settings_json)
    scenario = Scenario.model_validate_json(scenario_json)
    gc_tuning.tune(settings)
    profiles = None
    if profiles_json is not None:
        profiles = {t: parse_profile(doc, t) for t, doc in orjson.loads(profiles_json).items()}
    try:
        stats = _run_part(
            settings,
            scenario,
            PublishOptions(**options),
            index,
            workers,
            seq0,
            start_ms,
            stop,
            lambda s: out.put((index, s.to_dict())),
            tick_s=0.5,
            profiles=profiles,
        )
        out.put((index, stats.to_dict()))
    except Exception as exc:  # reported to the parent, which fails the run
        out.put((index, {"error": f"{type(exc).__name__}: {exc}"}))


def run_scenario(
    settings: Settings,
    scenario: Scenario,
    options: PublishOptions,
    workers: int = 1,
    on_tick: Callable[[PublishStats], None] | None = None,
    stop: threading.Event | None = None,
    profiles: Profiles | None = None,
) -> PublishStats:
    """Run the scenario with ``workers`` processes (1 = in this process); aggregated stats. ``profiles``:
    the device profiles of the fleet (default: the shipped ones)."""
    stop = stop or threading.Event()
    seq0 = now_ms()
    start_ms = seq0
    if options.truth_file:
        Path(options.truth_file).parent.mkdir(parents=True, exist_ok=True)
        Path(options.truth_file).write_bytes(b"")
    if workers <= 1:
        return _run_part(
            settings, scenario, options, 0, 1, seq0, start_ms, stop, on_tick, tick_s=1.0, profiles=profiles
        )

    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            name=f"iotp-sim-{i}",
            daemon=True,
            args=(
                settings.model_dump_json(),
                scenario.model_dump_json(),
                asdict(options),
                i,
                workers,
                seq0,
                start_ms,
                out,
                None if profiles is None else orjson.dumps({t: p.model_dump(mode="json") for t, p in profiles.items()}),
            ),
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    latest: dict[int, PublishStats] = {}
    errors: list[str] = []
    stop_sent = False
    last_tick = time.monotonic()
    try:
        while not all(i in latest and latest[i].done for i in range(workers)) and len(errors) < workers:
            if stop.is_set() and not stop_sent:
                stop_sent = True
                for p in procs:
                    if p.is_alive() and p.pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal.SIGTERM)
            try:
                index, data = out.get(timeout=0.5)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if "error" in data:
                errors.append(f"worker {index}: {data['error']}")
                latest[index] = PublishStats(done=True)
                continue
            latest[index] = PublishStats.from_dict(data)
            if on_tick and time.monotonic() - last_tick >= 1.0:
                last_tick = time.monotonic()
                on_tick(PublishStats.merge(list(latest.values())))
    except KeyboardInterrupt:
        stop.set()
        for p in procs:
            p.join(20)
        while True:
            try:
                index, data = out.get(timeout=0.2)
            except queue_mod.Empty:
                break
            if "error" not in data:
                latest[index] = PublishStats.from_dict(data)
    finally:
        for p in procs:
            p.join(20)
    if errors:
        raise RuntimeError("; ".join(errors))
    total = PublishStats.merge([latest[i] for i in sorted(latest)])
    total.workers = workers
    return total
