"""Drive the running pipeline step by step and measure every stage.

One step = publish at the offered rate for ``step_s`` seconds (``publisher="lean"``, the default: the
simulator's fleet and readings sent by :mod:`loadtest.lean_publisher`, about a tenth of the simulator's CPU
per message; ``"simulator"``: the real simulator with its paho client; both as subprocesses, with a
device-id prefix of their own), then let the pipeline drain for at most ``drain_s`` seconds, and
measure:

- throughput per stage over the publishing window, from the cumulative counters every stage keeps in the
  Redis stats hash (MQTT in = ``gateway.received``, Kafka in = ``gateway.forwarded``, processed =
  ``stream.readings``, stored = ``sink.readings``), plus what the Redis probe saw;
- latency sensor time → visible in Redis (probe on the readings channel) and → stored in ClickHouse
  (``inserted_at - ts`` of the step's rows, computed by ClickHouse through the API);
- loss and duplicates, exact per device: stored distinct readings (identities ``(device, ts, seq)``, so
  exact also for rebooting or seq-less simulated devices) are compared with what was published;
- CPU and RSS of every process over the publishing window only (not the drain), the publisher's own
  processes included, one row each (:class:`loadtest.probes.WindowSampler`).

A step is *sustainable* (:func:`verdict`) when the publisher kept up (≥ 98 % of offered), the pipeline
kept pace (``backlog_s``: what was published but not yet through the stream stage when publishing ended,
in seconds of the publish rate, at most ``max_backlog_s``; a backlog in Mosquitto in front of a slow
gateway counts as much as one in Kafka),
the backlog was bounded (every published reading was stored within ``max_drain_s`` of the end of
publishing), and nothing was lost. The pace rule matters because the drain alone is a weak test: once the
publisher and the gateway stop, the stream worker has the machine to itself and clears a 20 s step's
backlog of a quarter of its input in under 5 s.
Stage rates are counter deltas over the publishing window, read ``STATS_LAG_S`` after it ends because
every stage flushes its counters about once a second.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson
import redis
import yaml

from iotp import stats
from iotp.settings import Settings
from iotp.topics import redis_names
from loadtest.probes import RedisLatencyProbe, StageCounters, WindowSampler, latency_split, latency_timeline

STATS_LAG_S = 1.5
HARNESS = "harness"  # the WindowSampler row of the load test's own process
STAGES = {  # stage -> cumulative counter in the Redis stats hash (MQTT messages for mqtt_in, else readings)
    "mqtt_in": stats.GATEWAY_RECEIVED,
    "kafka_in": stats.GATEWAY_FORWARDED,
    "processed": stats.STREAM_READINGS,
    "stored": stats.SINK_READINGS,
}


@dataclass
class StepResult:
    offered: float
    step_s: float
    published: int = 0
    publish_rate: float = 0.0
    stage_rates: dict[str, float] = field(default_factory=dict)
    redis_latency_ms: dict[str, float] = field(default_factory=dict)
    #: sensor -> Redis latency split at the gateway's receive stamp (loadtest.probes.latency_split):
    #: {"to_gateway": percentiles, "after_gateway": percentiles}
    redis_latency_split_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: sensor -> Redis latency per second of sensor time from the step's start (loadtest.probes.latency_timeline)
    redis_latency_timeline: list[dict[str, float]] = field(default_factory=list)
    clickhouse_latency_ms: dict[str, float] = field(default_factory=dict)
    drained: bool = False
    drain_s: float = 0.0
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    #: readings published but not yet processed by the stream stage when publishing ended (read with the
    #: counters, STATS_LAG_S later), in seconds of the publish rate
    backlog_s: float = 0.0
    processes: dict[str, dict[str, float]] = field(default_factory=dict)  # over the publishing window
    #: the load test's own process (latency probe, CPU sampler, counters) over the same window: not part of
    #: the pipeline, so not a row of ``processes``, but it takes CPU from the same cores
    harness_cpu_pct: float = 0.0
    cpu_window_s: float = 0.0
    #: wall clock (epoch ms) when publishing started: second 0 of the two timelines
    started_ms: int = 0
    #: how long the publisher prepared its frames before that (nothing is published meanwhile)
    prepare_s: float = 0.0
    #: CPU % per process per second of the step from its start (the seconds of redis_latency_timeline)
    cpu_timeline: dict[str, list[float]] = field(default_factory=dict)
    sustainable: bool = False
    notes: list[str] = field(default_factory=list)


def backlog_s(published: int, processed: int, publish_rate: float) -> float:
    """Readings published but not processed yet, in seconds of the publish rate (0 when the stream stage
    kept pace, or nothing was published)."""
    if publish_rate <= 0:
        return 0.0
    return round(max(0, published - processed) / publish_rate, 2)


def verdict(
    result: StepResult, rate: float, max_drain_s: float, max_backlog_s: float, drain_s: float
) -> tuple[bool, list[str]]:
    """(sustainable, why not): the publisher kept up, the stream stage kept pace, the backlog drained in
    time, nothing was lost."""
    notes = []
    kept_up = result.publish_rate >= 0.98 * rate
    kept_pace = result.backlog_s <= max_backlog_s
    bounded = result.drained and result.drain_s <= max_drain_s
    if not kept_up:
        notes.append(f"publisher reached {result.publish_rate:.0f}/s of {rate:.0f}/s")
    if not kept_pace:
        notes.append(f"{result.backlog_s:.1f}s of input not yet processed when publishing ended")
    if result.drained and not bounded:
        notes.append(f"backlog took {result.drain_s:.0f}s to drain")
    if not result.drained:
        notes.append(f"not drained after {drain_s:.0f}s")
    if result.lost:
        notes.append(f"{result.lost} readings not stored")
    return kept_up and kept_pace and bounded and result.lost == 0, notes


def publishing_window(stats_written_at: float, elapsed: float) -> tuple[float, float]:
    """(start, end) wall-clock time of the simulator's publishing: it writes its stats file as soon as its
    workers are done, ``elapsed`` = how long they published. Start-up (imports, connecting) and the
    pipeline's drain after it are outside."""
    if elapsed <= 0:
        raise ValueError("the publisher reported no publishing time")
    return stats_written_at - elapsed, stats_written_at


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 1)

    return {
        "p50": q(0.50),
        "p95": q(0.95),
        "p99": q(0.99),
        "max": round(values[-1], 1),
        "mean": round(statistics.fmean(values), 1),
        "n": len(values),
    }


@dataclass
class LoadTest:
    settings: Settings
    devices: int = 200
    workers: int = 2
    batch: int = 1
    qos: int = 1
    step_s: float = 20.0
    drain_s: float = 30.0
    max_drain_s: float = 5.0
    max_backlog_s: float = 2.0
    mix: dict[str, float] = field(default_factory=lambda: {"power": 1.0})
    publisher: str = "lean"  # or "simulator"
    prepare: bool = True  # the lean publisher builds its frames before publishing (loadtest.prepared_frames)
    pids: dict[str, int] = field(default_factory=dict)
    log: Callable[..., object] = print

    def __post_init__(self) -> None:
        self.names = redis_names(self.settings)
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.counters = StageCounters(self.redis, self.names)
        self.tag = f"lt{uuid.uuid4().hex[:6]}"
        self.api = httpx.Client(
            base_url=self.settings.api_url, timeout=30, headers={"Authorization": f"Bearer {self.settings.api_token}"}
        )

    # ----------------------------------------------------------------- steps
    def _publish(self, rate: float, prefix: str, workdir: Path, sampler: WindowSampler) -> dict:
        """Run the simulator for one step; its processes are sampled as ``publisher*`` rows. Returns its stats,
        with ``written_at``: when it wrote them (the end of publishing)."""
        scenario = {
            "name": "loadtest",
            "fleet": {"devices": self.devices, "mix": self.mix, "id_prefix": prefix},
            "rate_per_s": rate,
            "duration_s": self.step_s,
            "qos": self.qos,
            "batch": self.batch,
            "anomalies": {"rate_per_device_hour": 0.0},
        }
        scenario_file = workdir / f"{prefix}scenario.yaml"
        scenario_file.write_text(yaml.safe_dump(scenario))
        stats_file = workdir / f"{prefix}stats.json"
        if self.publisher == "lean":
            cmd = [sys.executable, "-m", "loadtest.lean_publisher", "--scenario", str(scenario_file)]
            cmd += [] if self.prepare else ["--no-prepare"]
        elif self.publisher == "simulator":
            cmd = [sys.executable, "-m", "iotp_cli", "simulate", "--scenario", str(scenario_file), "--quiet"]
        else:
            raise ValueError(f"unknown publisher {self.publisher!r} (lean or simulator)")
        cmd += ["--workers", str(self.workers), "--stats-json", str(stats_file)]
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT)
            sampler.watch_each("publisher", proc.pid)
            try:
                code = proc.wait(self.step_s + 120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise
            if code != 0:
                output.seek(0)
                raise subprocess.CalledProcessError(code, cmd, output.read())
        stats = orjson.loads(stats_file.read_bytes())
        stats["written_at"] = stats_file.stat().st_mtime
        return stats

    def _ingest_check(self, prefix: str) -> dict:
        response = self.api.get("/api/pipeline/ingest-check", params={"device_prefix": prefix})
        response.raise_for_status()
        return response.json()

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until the stream jobs and the sink report no lag, so a step does not inherit a backlog."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counters = self.counters.read()
            if counters.get(stats.STREAM_LAG, 0) == 0 and counters.get(stats.SINK_LAG, 0) == 0:
                return True
            time.sleep(1.0)
        return False

    def run_step(self, rate: float, index: int, workdir: Path) -> StepResult:
        prefix = f"{self.tag}-s{index}-"
        idle = self.wait_idle()
        result = StepResult(offered=rate, step_s=self.step_s)
        if not idle:
            result.notes.append("started with a backlog from the previous step")
        probe = RedisLatencyProbe(self.redis, self.names.channel_readings, prefix)
        sampler = WindowSampler(self.pids)
        sampler.watch_one(HARNESS, os.getpid())
        sampler.start()
        before = self.counters.read()
        try:
            stats = self._publish(rate, prefix, workdir, sampler)
        finally:
            sampler.stop()
        publish_end = time.monotonic()
        # Everything is measured over the publishing window, which the publisher reports: not its start-up,
        # nor the time the lean publisher takes to prepare its frames (nothing is published before it).
        cpu_start, cpu_end = publishing_window(stats["written_at"], stats["elapsed"])
        window = cpu_end - cpu_start
        started_ms = result.started_ms = int(cpu_start * 1000)
        result.prepare_s = float(stats.get("prepare_s", 0.0))
        result.processes = sampler.usage(cpu_start, cpu_end)
        result.harness_cpu_pct = result.processes.pop(HARNESS, {}).get("cpu_pct", 0.0)
        result.cpu_window_s = round(window, 2)
        result.cpu_timeline = sampler.timeline(cpu_start, cpu_end)
        time.sleep(STATS_LAG_S)
        after = self.counters.read()
        # "sent" = acknowledged by the broker: a reading the publisher gave up on never entered the pipeline
        result.published = int(stats["confirmed"])
        result.publish_rate = round(stats["confirmed"] / stats["elapsed"], 1) if stats["elapsed"] else 0.0
        if stats.get("unconfirmed_messages"):
            result.notes.append(f"{stats['unconfirmed_messages']} messages never acknowledged by the broker")
        counts = {stage: after.get(counter, 0) - before.get(counter, 0) for stage, counter in STAGES.items()}
        for stage, count in counts.items():
            per = self.batch if stage == "mqtt_in" else 1  # a message carries `batch` readings
            result.stage_rates[stage] = round(per * count / window, 1)
        samples, seen = probe.take_samples()
        result.stage_rates["redis_visible"] = round(seen / window, 1)

        # drain: wait until every published reading is stored (or the drain time is up)
        drain_started = publish_end
        check: dict = {}
        while time.monotonic() - drain_started < self.drain_s:
            check = self._ingest_check(prefix)
            if check.get("readings", 0) >= result.published:
                result.drained = True
                break
            time.sleep(0.5)
        result.drain_s = round(time.monotonic() - drain_started, 1)
        more, _ = probe.take_samples()
        probe.close()
        samples += more
        result.redis_latency_ms = percentiles([latency for _, _, latency in samples])
        result.redis_latency_split_ms = {part: percentiles(v) for part, v in latency_split(samples).items()}
        result.redis_latency_timeline = latency_timeline(samples, started_ms)
        result.stored = int(check.get("readings", 0))
        result.lost = max(0, result.published - result.stored)
        result.duplicates = int(check.get("duplicate_rows", 0))
        result.clickhouse_latency_ms = {k: v for k, v in check.get("latency_ms", {}).items()}
        result.backlog_s = backlog_s(result.published, int(counts["processed"]), result.publish_rate)
        result.sustainable, notes = verdict(result, rate, self.max_drain_s, self.max_backlog_s, self.drain_s)
        result.notes += notes
        return result

    def run(self, rates: list[float], stop_after_failures: int = 2) -> list[StepResult]:
        results = []
        failures = 0
        with tempfile.TemporaryDirectory(prefix="iotp-loadtest-") as tmp:
            for index, rate in enumerate(rates):
                self.log(f"step {index + 1}/{len(rates)}: {rate:.0f} readings/s for {self.step_s:.0f}s")
                result = self.run_step(rate, index, Path(tmp))
                results.append(result)
                prepared = f" (frames prepared in {result.prepare_s:.1f}s first)" if result.prepare_s else ""
                self.log(
                    f"  published {result.publish_rate:.0f}/s{prepared}, stored {result.stored}/{result.published}, "
                    f"sustainable={result.sustainable} {'; '.join(result.notes)}"
                )
                failures = 0 if result.sustainable else failures + 1
                if failures >= stop_after_failures:
                    self.log("  two unsustainable steps in a row: stopping the ramp")
                    break
        return results


def max_sustainable(results: list[StepResult]) -> float | None:
    rates = [r.offered for r in results if r.sustainable]
    return max(rates) if rates else None


def to_json(results: list[StepResult], extra: dict) -> bytes:
    return orjson.dumps(
        {**extra, "steps": [asdict(r) for r in results], "max_sustainable_rate": max_sustainable(results)},
        option=orjson.OPT_INDENT_2,
    )
