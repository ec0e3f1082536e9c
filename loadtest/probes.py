"""What the load test watches while it drives the pipeline.

- :class:`StageCounters`: the cumulative per-stage counters every component keeps in the Redis stats hash;
- :class:`RedisLatencyProbe`: subscribes to the readings channel (published in the same Redis round trip
  that stores the latest state) and records sensor time → visible-in-Redis latency of the load test's
  own readings;
- :class:`ProcessSampler`: CPU and RSS of every pipeline/stack process (psutil), between two samples;
- :class:`WindowSampler`: CPU and RSS per process over an exact time window (the publishing window of a
  step), sampled in the background, including processes that start and end inside it (the publishers);
  the window arithmetic is in pure functions (:func:`cpu_at`, :func:`window_usage`).
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import orjson
import psutil
import redis

from iotp.schema import device_batches
from iotp.topics import RedisNames

#: one reading seen by :class:`RedisLatencyProbe`: (sensor ts ms, gateway receive ts ms, sensor -> Redis ms)
Sample = tuple[int, int, float]


class StageCounters:
    def __init__(self, client: redis.Redis, names: RedisNames) -> None:
        self.redis = client
        self.names = names

    def read(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.names.stats_key)
        out = {}
        for key, value in raw.items():
            try:
                out[key.decode() if isinstance(key, bytes) else key] = float(value)
            except ValueError:
                continue
        return out


@dataclass
class RedisLatencyProbe:
    client: redis.Redis
    channel: str
    device_prefix: str
    #: (sensor ts, gateway rx, latency ms) of every reading seen since the last take
    samples: list[Sample] = field(default_factory=list)
    readings: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.channel)
        self._thread = threading.Thread(target=self._run, name="redis-latency-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        prefix = self.device_prefix.encode()
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if not message:
                continue
            data: bytes = message["data"]
            if prefix not in data[:120]:
                continue
            now = time.time() * 1000
            with self._lock:
                for batch in device_batches(orjson.loads(data)):  # a device batch, or many (partition mode)
                    readings = batch["readings"]
                    self.samples.extend([(r["ts"], r.get("rx", r["ts"]), now - r["ts"]) for r in readings])
                    self.readings += len(readings)

    def take_samples(self) -> tuple[list[Sample], int]:
        """(sensor ts, gateway rx, latency ms) samples and reading count since the last take."""
        with self._lock:
            samples, count = self.samples, self.readings
            self.samples, self.readings = [], 0
        return samples, count

    def take(self) -> tuple[list[float], int]:
        """Latencies and reading count since the last take."""
        samples, count = self.take_samples()
        return [latency for _, _, latency in samples], count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()


def latency_timeline(samples: list[Sample], start_ms: int, bucket_ms: int = 1000) -> list[dict[str, float]]:
    """Sensor -> Redis latency per ``bucket_ms`` of sensor time from ``start_ms``: one entry per bucket that
    has readings, ``{"s": bucket start in seconds from start_ms, "n", "p50", "p99", "max", "gw_p99"}``,
    ``gw_p99`` being the p99 of sensor -> gateway receive (``rx - ts``) alone. Periodic work (windows that
    all close in the same second, snapshots, the sink's insert blocks) shows up here as the buckets whose
    p99 stands out, where one p99 over the whole step cannot say when it happened; ``gw_p99`` says whether
    the slow second was already slow before the gateway (publisher, Mosquitto, the gateway's MQTT reads)."""
    buckets: dict[int, list[Sample]] = {}
    for sample in samples:
        buckets.setdefault((sample[0] - start_ms) // bucket_ms, []).append(sample)
    out = []
    for index in sorted(buckets):
        values = sorted(latency for _, _, latency in buckets[index])
        to_gateway = sorted(rx - ts for ts, rx, _ in buckets[index])
        n = len(values)
        p99 = min(n - 1, int(0.99 * n))
        out.append(
            {
                "s": round(index * bucket_ms / 1000, 3),
                "n": n,
                "p50": round(values[n // 2], 1),
                "p99": round(values[p99], 1),
                "max": round(values[-1], 1),
                "gw_p99": round(float(to_gateway[p99]), 1),
            }
        )
    return out


def latency_split(samples: list[Sample]) -> dict[str, list[float]]:
    """The sensor -> Redis latencies of ``samples`` split at the gateway's receive stamp: ``to_gateway``
    (publisher, Mosquitto, the gateway's MQTT reads) and ``after_gateway`` (linger, Kafka, the stream
    worker, Redis), one value of each per reading."""
    return {
        "to_gateway": [float(rx - ts) for ts, rx, _ in samples],
        "after_gateway": [latency - (rx - ts) for ts, rx, latency in samples],
    }


def descendant_pids(children: Mapping[int, Sequence[int]], root: int) -> Iterator[int]:
    """Every pid below ``root`` in a parent -> children map (depth first)."""
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            yield child
            stack.append(child)


class ProcessTable:
    """Every process of the machine and its parent, from one scan of ``/proc``.

    ``psutil.Process.children(recursive=True)`` scans all of ``/proc`` on every call, so a sampler that asked
    each of its ~10 roots for its children 4 times a second read ~40 full process tables a second, on the
    cores the pipeline it measures runs on. One table per sample serves every root: the load test's own
    process went from 7.4-8.7 % of a core to 4.0-6.0 % (``benchmarks/results/harness/``)."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}
        self.children: defaultdict[int, list[int]] = defaultdict(list)
        for proc in psutil.process_iter(["ppid"]):
            self.procs[proc.pid] = proc
            if proc.info["ppid"] is not None:
                self.children[proc.info["ppid"]].append(proc.pid)

    def tree(self, root: psutil.Process) -> list[psutil.Process]:
        """``root`` and its descendants (those alive at the scan)."""
        below = (self.procs[pid] for pid in descendant_pids(self.children, root.pid) if pid in self.procs)
        return [root, *below]


class ProcessSampler:
    """CPU% (of one core) and RSS per named process, averaged over the interval between two samples."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        table = ProcessTable()
        for name, pid in pids.items():
            try:
                proc = psutil.Process(pid)
                self._tree_cpu(table.tree(proc))
                self.procs[name] = proc
            except psutil.Error:
                continue
        self.started = time.monotonic()

    @staticmethod
    def _tree_cpu(tree: list[psutil.Process]) -> float:
        total = 0.0
        for p in tree:
            with contextlib.suppress(psutil.Error):
                total += p.cpu_percent(None)
        return total

    def sample(self) -> dict[str, dict[str, float]]:
        out = {}
        table = ProcessTable()
        for name, proc in self.procs.items():
            tree = table.tree(proc)
            rss = 0
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            out[name] = {"cpu_pct": round(self._tree_cpu(tree), 1), "rss_mb": round(rss / 2**20, 1)}
        return out


# ------------------------------------------------------------------------------------ window sampling
Point = tuple[float, float]  # (wall-clock time s, value): cumulative CPU seconds, or RSS bytes


def cpu_at(points: Sequence[Point], t: float) -> float:
    """Cumulative CPU seconds at ``t``, linearly interpolated between samples; before the first sample it is
    the first value, after the last the last (a process that ended keeps its total)."""
    if not points:
        return 0.0
    times = [p[0] for p in points]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def window_cpu_pct(points: Sequence[Point], start: float, end: float) -> float:
    """Average CPU % of one core over ``[start, end]``."""
    if end <= start:
        raise ValueError(f"empty window {start}..{end}")
    return 100.0 * (cpu_at(points, end) - cpu_at(points, start)) / (end - start)


def window_peak(points: Sequence[Point], start: float, end: float) -> float:
    """The largest value sampled inside ``[start, end]`` (0 when none was)."""
    return max((v for t, v in points if start <= t <= end), default=0.0)


@dataclass
class Series:
    cpu: list[Point] = field(default_factory=list)  # cumulative CPU seconds, never decreasing
    rss: list[Point] = field(default_factory=list)  # bytes

    def add_cpu(self, t: float, seconds: float) -> None:
        # a child reaped outside the tree takes its time with it: keep the counter monotonic
        self.cpu.append((t, max(seconds, self.cpu[-1][1] if self.cpu else 0.0)))


def window_usage(series: dict[str, Series], start: float, end: float) -> dict[str, dict[str, float]]:
    """Per process name: average CPU % over the window and peak RSS MB inside it; processes without a
    sample in or around the window are left out."""
    out = {}
    for name, s in series.items():
        if not s.cpu or s.cpu[-1][0] < start or s.cpu[0][0] > end:
            continue
        out[name] = {
            "cpu_pct": round(window_cpu_pct(s.cpu, start, end), 1),
            "rss_mb": round(window_peak(s.rss, start, end) / 2**20, 1),
        }
    return out


def cpu_timeline(series: dict[str, Series], start: float, end: float, bucket_s: float = 1.0) -> dict[str, list[float]]:
    """Per process name: CPU % in each ``bucket_s`` from ``start`` to ``end`` (wall clock), so a process that
    bursts (a merge, a snapshot, a collection) in the second the latency jumps can be seen next to the
    latency timeline; buckets shorter than the sampling interval are interpolated, so keep them >= 4 x."""
    edges = [start + i * bucket_s for i in range(int((end - start) // bucket_s) + 1)]
    out = {}
    for name, s in series.items():
        if not s.cpu or s.cpu[-1][0] < start or s.cpu[0][0] > end:
            continue
        out[name] = [round(window_cpu_pct(s.cpu, a, b), 1) for a, b in pairwise(edges)]
    return out


def _cpu_seconds(proc: psutil.Process, with_reaped_children: bool) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if with_reaped_children:  # children that exited and were waited for: their time moved to the parent
        total += t.children_user + t.children_system
    return total


class WindowSampler:
    """Samples, every ``interval`` s in a background thread, the cumulative CPU time and RSS of

    - named long-running processes (``pids``), each counted with all its descendants (one row each);
    - process trees added with :meth:`watch_each` (the load test's publisher): one row per process, so the
      simulator's worker processes show separately; a process that starts later gets a first point of 0 CPU
      at its start time, one that exits keeps its total (less its last ``interval``).

    Then :meth:`usage` gives CPU % and peak RSS per row over any window inside the sampled span. The clock
    is wall time (``time.time()``), the clock of the processes' start times."""

    def __init__(self, pids: dict[str, int], interval: float = 0.25) -> None:
        self.interval = interval
        self.series: dict[str, Series] = {}
        self._trees: dict[str, psutil.Process] = {}
        self._each: list[tuple[str, psutil.Process]] = []
        self._single: dict[str, psutil.Process] = {}
        self._named: dict[int, str] = {}  # pid -> row of a watch_each process (and its descendants)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self._trees[name] = psutil.Process(pid)
        self._thread = threading.Thread(target=self._run, name="window-sampler", daemon=True)

    def start(self) -> WindowSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()

    def watch_each(self, prefix: str, pid: int) -> None:
        """Sample ``pid`` as row ``prefix`` and each descendant as ``prefix-worker-N`` (a multiprocessing
        worker) or ``prefix-helper-N`` (anything else, e.g. multiprocessing's resource tracker)."""
        with contextlib.suppress(psutil.Error), self._lock:
            proc = psutil.Process(pid)
            self._each.append((prefix, proc))
            self._named[pid] = prefix

    def watch_one(self, name: str, pid: int) -> None:
        """Sample ``pid`` alone (not its children) as row ``name``: the load test's own process."""
        with contextlib.suppress(psutil.Error), self._lock:
            self._single[name] = psutil.Process(pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _row(self, prefix: str, proc: psutil.Process) -> str:
        name = self._named.get(proc.pid)
        if name is None:
            try:
                worker = any("spawn_main" in part or "fork" in part for part in proc.cmdline())
            except psutil.Error:
                worker = False
            kind = "worker" if worker else "helper"
            n = 1 + sum(1 for v in self._named.values() if v.startswith(f"{prefix}-{kind}-"))
            name = self._named[proc.pid] = f"{prefix}-{kind}-{n}"
        return name

    def sample(self) -> None:
        now = time.time()
        table = ProcessTable()
        with self._lock:
            for name, root in self._trees.items():
                cpu = rss = 0.0
                for p in table.tree(root):
                    with contextlib.suppress(psutil.Error):
                        cpu += _cpu_seconds(p, with_reaped_children=True)
                        rss += p.memory_info().rss
                self._record(name, now, cpu, rss)
            for name, proc in self._single.items():
                with contextlib.suppress(psutil.Error):
                    self._record(name, now, _cpu_seconds(proc, with_reaped_children=False), proc.memory_info().rss)
            for prefix, root in self._each:
                for p in table.tree(root):
                    try:
                        cpu = _cpu_seconds(p, with_reaped_children=False)  # its children are rows of their own
                        rss = p.memory_info().rss
                        started = p.create_time()
                    except psutil.Error:
                        continue
                    self._record(self._row(prefix, p), now, cpu, rss, started=started)

    def _record(self, name: str, now: float, cpu: float, rss: float, started: float | None = None) -> None:
        """One point of row ``name``; a row that begins with ``started`` (a process that started after the
        sampler) gets a first point of 0 CPU at that time."""
        series = self.series.setdefault(name, Series())
        if started is not None and not series.cpu:
            series.add_cpu(started, 0.0)
        series.add_cpu(now, cpu)
        series.rss.append((now, rss))

    def usage(self, start: float, end: float) -> dict[str, dict[str, float]]:
        with self._lock:
            return window_usage(self.series, start, end)

    def timeline(self, start: float, end: float) -> dict[str, list[float]]:
        with self._lock:
            return cpu_timeline(self.series, start, end)
