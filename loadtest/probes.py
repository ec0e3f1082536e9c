"""What the load test watches while it drives the pipeline.

- :class:`StageCounters`: the cumulative per-stage counters every component keeps in the Redis stats hash;
- :class:`RedisLatencyProbe`: subscribes to the readings channel (published in the same Redis round trip
  that stores the latest state) and records sensor time → visible-in-Redis latency of the load test's
  own readings;
- :class:`ProcessSampler`: CPU and RSS of every pipeline/stack process (psutil).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import orjson
import psutil
import redis

from iotp.topics import RedisNames


class StageCounters:
    def __init__(self, client: redis.Redis, names: RedisNames) -> None:
        self.redis = client
        self.names = names

    def read(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.names.stats_key)
        out = {}
        for key, value in raw.items():
            try:
                out[key.decode()] = float(value)
            except ValueError:
                continue
        return out


@dataclass
class RedisLatencyProbe:
    client: redis.Redis
    channel: str
    device_prefix: str
    latencies_ms: list[float] = field(default_factory=list)
    readings: int = 0
    ids: set[str] = field(default_factory=set)

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
            batch = orjson.loads(data)
            with self._lock:
                for r in batch["readings"]:
                    self.latencies_ms.append(now - r["ts"])
                    self.ids.add(r["id"])
                self.readings += len(batch["readings"])

    def take(self) -> tuple[list[float], int]:
        """Latencies and reading count since the last call."""
        with self._lock:
            latencies, count = self.latencies_ms, self.readings
            self.latencies_ms, self.readings = [], 0
        return latencies, count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()


class ProcessSampler:
    """CPU% (of one core) and RSS per named process, averaged over the interval between two samples."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            try:
                proc = psutil.Process(pid)
                self._tree_cpu(proc)
                self.procs[name] = proc
            except psutil.Error:
                continue
        self.started = time.monotonic()

    @staticmethod
    def _tree(proc: psutil.Process) -> list[psutil.Process]:
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return [proc]

    def _tree_cpu(self, proc: psutil.Process) -> float:
        total = 0.0
        for p in self._tree(proc):
            with contextlib.suppress(psutil.Error):
                total += p.cpu_percent(None)
        return total

    def sample(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, proc in self.procs.items():
            rss = 0
            for p in self._tree(proc):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            out[name] = {"cpu_pct": round(self._tree_cpu(proc), 1), "rss_mb": round(rss / 2**20, 1)}
        return out
