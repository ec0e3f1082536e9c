"""Soak benchmark: the whole pipeline at a steady rate for a long time while a random pipeline process is
``kill -9``-ed every few minutes; zero loss, flat RSS and bounded lag are checked exactly.

Run (the full soak, about 33 min):
    .venv/bin/python benchmarks/soak.py --minutes 30 --rate 1000 --kill-every 180
A short check:
    .venv/bin/python benchmarks/soak.py --minutes 4 --kill-every 60

It starts its own local stack (Mosquitto, Redis, the Kafka-wire broker and the pipeline: gateways, stream
workers, the API with the embedded ClickHouse sink) under supervisord, in a temporary state dir on free
loopback ports, and always tears it down (also on Ctrl-C / SIGTERM).

Method
- Load: the real simulator publisher (QoS 1, power meters with 5 metrics per reading, no anomalies) in its
  own process(es), on a fleet with a device-id prefix of its own and a first sequence number chosen here, so
  each device's last reading is known. Readings are counted as sent only when the broker acknowledged them.
- Chaos: every ``--kill-every`` s (x0.7-1.3 jitter) one random RUNNING pipeline program (gateway-N,
  stream-N, api = API + embedded sink; with ``--kill-services`` also Redis and Mosquitto, and the Kafka
  broker and its store when its storage is durable, ``--kafka-storage s3``) gets SIGKILL; supervisord
  restarts it. No kill in the last ``--quiet-tail`` s of publishing.
- Broker storage: ``--kafka-storage memory`` by default, the conditions under which the max sustainable
  rate was measured; the durable ``s3`` engine costs a store round trip per batch (docs/performance.md).
- Every ``--sample-every`` s: CPU and RSS per program (a program's restarted process is followed by name),
  the stage counters and lags of the Redis stats hash, the end-to-end backlog (readings acknowledged by the
  broker - readings stored), and sensor -> Redis latency p50/p99 of the interval (``RedisLatencyProbe``).
- End: publishing stops, the pipeline gets up to ``--drain-timeout`` s to drain, then
  ``/api/pipeline/ingest-check`` (the API's own query of the raw table) must hold exactly the acknowledged
  readings with no gap, and each device's latest state in Redis must be its last acknowledged reading.

Criteria (each pass/fail): load delivered (>= 98 % of the rate, every message acknowledged); zero loss in
ClickHouse; Redis latest = last reading for every device; RSS of every pipeline process grows <= 10 % from
the end of its warm-up to the end of publishing (a restarted process is judged from its own warm-up);
lag bounded (the
backlog never stays above ``--lag-floor-s`` seconds of traffic for longer than ``--max-behind`` s, and the
final drain finishes); no process crashed besides the kills; every killed process came back (stayed up 10 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psutil
import redis
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra.mqtt_auth import with_local_credentials  # noqa: E402
from infra.ports import free_port  # noqa: E402
from infra.stack import PIPELINE_GROUP, SERVICES_GROUP, LocalStack  # noqa: E402
from iotp import stats  # noqa: E402
from iotp.settings import Settings  # noqa: E402
from iotp.topics import redis_names  # noqa: E402
from loadtest.probes import ProcessSampler, RedisLatencyProbe, StageCounters  # noqa: E402
from loadtest.runner import percentiles  # noqa: E402
from loadtest.soak import Killer, ProgramWatcher, Publisher, lag_stretches, rss_flatness  # noqa: E402

console = Console(width=max(Console().width, 150))
CORES = psutil.cpu_count() or 1
COUNTERS = {  # interval rate -> cumulative counter in the stats hash
    "mqtt_in": stats.GATEWAY_RECEIVED,
    "kafka_in": stats.GATEWAY_FORWARDED,
    "processed": stats.STREAM_READINGS,
    "stored": stats.SINK_READINGS,
}


class Interrupted(Exception):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="publishing time (default 30)")
    p.add_argument(
        "--rate", type=float, default=1000.0, help="readings/s; default half the max sustainable 2,000 (1 per message)"
    )
    p.add_argument("--devices", type=int, default=100, help="power meters (5 metrics per reading)")
    p.add_argument("--publishers", type=int, default=1, help="publisher processes")
    p.add_argument("--gateways", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="stream worker processes")
    p.add_argument("--kill-every", type=float, default=180.0, help="seconds between kills, jittered x0.7-1.3")
    p.add_argument("--no-kill", action="store_true", help="a plain soak: no kills")
    p.add_argument(
        "--kill-services",
        action="store_true",
        help="also kill Redis and Mosquitto, and the Kafka broker and its store with --kafka-storage s3 "
        "(with memory storage a broker kill loses data by design)",
    )
    p.add_argument(
        "--kafka-storage",
        choices=["memory", "s3"],
        default="s3",
        help="the local broker's storage (IOTP_KAFKA_STORAGE): s3 (default, durable, as `make run`) or memory "
        "(the conditions of the load-test tables in docs/performance.md)",
    )
    p.add_argument("--quiet-tail", type=float, default=30.0, help="no kill in the last N s of publishing")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="RSS warm-up per process life, s (default 120, or a quarter of the run when shorter)",
    )
    p.add_argument("--rss-limit", type=float, default=0.10, help="allowed RSS growth (0.10 = 10 %%)")
    p.add_argument("--lag-floor-s", type=float, default=5.0, help="backlog floor, in seconds of traffic")
    p.add_argument("--max-behind", type=float, default=150.0, help="longest allowed stretch above the floor, s")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="max wait for the pipeline to drain, s")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill schedule")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak", help="writes .json + .png")
    p.add_argument("--keep-state", action="store_true", help="keep the temp state dir (logs) after the run")
    return p.parse_args(argv)


def soak_settings(state_dir: Path, kafka_storage: str | None = None) -> Settings:
    """Fresh loopback ports and an isolated state dir, as ``tests/support/services.make_test_settings`` does."""
    extra: dict = {"kafka_storage_port": free_port()} if "kafka_storage_port" in Settings.model_fields else {}
    if kafka_storage and "kafka_storage" in Settings.model_fields:
        extra["kafka_storage"] = kafka_storage
    return Settings(
        **extra,
        state_dir=state_dir,
        mqtt_port=free_port(),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        api_port=free_port(),
        gateway_metrics_port=free_port(),
    )


class Soak:
    def __init__(self, args: argparse.Namespace, settings: Settings, stack: LocalStack) -> None:
        self.args = args
        self.settings = settings
        self.stack = stack
        self.tag = f"soak{uuid.uuid4().hex[:6]}-"
        self.names = redis_names(settings)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
        self.counters = StageCounters(self.redis, self.names)
        self.api = httpx.Client(
            base_url=settings.api_url, timeout=60, headers={"Authorization": f"Bearer {settings.api_token}"}
        )
        self.rng = random.Random(args.seed)
        self.intervals: list[dict] = []
        self.notes: list[str] = []
        self.probe: RedisLatencyProbe | None = None
        self.publisher: Publisher | None = None

    # -------------------------------------------------------------------------------------------- pieces
    def programs(self) -> list[str]:
        return [p["name"] for p in self.stack.supervisor.processes() if p["group"] == PIPELINE_GROUP]

    def services(self) -> list[str]:
        return [p["name"] for p in self.stack.supervisor.processes() if p["group"] == SERVICES_GROUP]

    def kill_targets(self, pipeline: list[str]) -> list[str]:
        targets = list(pipeline)
        if self.args.kill_services:
            targets += ["redis", "mosquitto"]
            storage = str(getattr(self.settings, "kafka_storage", "memory"))
            if storage != "memory":  # a durable store (s3): the broker may be killed
                targets += [n for n in self.services() if n.startswith("kafka")]
            else:
                self.notes.append(f"the Kafka broker is not killed: its storage is {storage!r} (not durable)")
        return targets

    def _probe(self) -> RedisLatencyProbe:
        """The latency probe; a new one if its thread died (Redis was killed)."""
        if self.probe is None or not self.probe._thread.is_alive():
            if self.probe is not None:
                self.probe.close()
            # a client without a socket timeout: the probe's pubsub waits on its own (get_message timeout)
            self.probe = RedisLatencyProbe(
                redis.Redis.from_url(self.settings.redis_url), self.names.channel_readings, self.tag
            )
        return self.probe

    def _read_counters(self) -> dict[str, float] | None:
        try:
            return self.counters.read()
        except redis.RedisError:
            return None

    def ingest_check(self) -> dict:
        response = self.api.get("/api/pipeline/ingest-check", params={"device_prefix": self.tag})
        response.raise_for_status()
        return response.json()

    def redis_mismatches(self, last_seq: dict[str, int]) -> list[dict]:
        """Devices whose latest state in Redis is not their last reading."""
        devices = sorted(last_seq)
        pipe = self.redis.pipeline(transaction=False)
        for device in devices:
            pipe.hget(self.names.device_key(device), "seq")
        out = []
        for device, got in zip(devices, pipe.execute(), strict=True):
            if got is None or int(got) != last_seq[device]:
                out.append(
                    {"device": device, "expected_seq": last_seq[device], "redis_seq": None if got is None else int(got)}
                )
        return out

    # ----------------------------------------------------------------------------------------- sampling
    def sample(self, t: float, phase: str, watcher: ProgramWatcher, prev: dict) -> dict:
        now = time.monotonic()
        dt = max(1e-6, now - prev["mono"])
        confirmed = self.publisher.poll() if self.publisher else prev["confirmed"]
        counters = self._read_counters() or prev["counters"]
        processes, _ = watcher.sample()
        own = self.self_sampler.sample().get("soak", {})  # this script and its publisher processes
        self.self_sampler = ProcessSampler({"soak": os.getpid()})
        machine_pct = psutil.cpu_percent(None)  # all cores: 100 = the whole machine
        probe = self._probe()
        latencies, seen = probe.take()
        now_ms = time.time() * 1000
        row: dict = {
            "t": round(t, 1),
            "phase": phase,
            "confirmed": confirmed,
            "rates": {
                "published": round((confirmed - prev["confirmed"]) / dt, 1),
                **{
                    stage: round((counters.get(c, 0) - prev["counters"].get(c, 0)) / dt, 1)
                    for stage, c in COUNTERS.items()
                },
                "redis_visible": round(seen / dt, 1),
            },
            "stream_lag": counters.get("stream.lag"),
            "sink_lag": counters.get("sink.lag"),
            "stream_lag_age_s": round((now_ms - counters["stream.updated_ms"]) / 1000, 1)
            if "stream.updated_ms" in counters
            else None,
            "sink_lag_age_s": round((now_ms - counters["sink.updated_ms"]) / 1000, 1)
            if "sink.updated_ms" in counters
            else None,
            # readings acknowledged by the broker but not yet processed / stored (counters include redeliveries)
            "backlog_processed": max(
                0, confirmed - (counters.get("stream.readings", 0) - self.base["stream.readings"])
            ),
            "backlog_stored": max(0, confirmed - (counters.get("sink.readings", 0) - self.base["sink.readings"])),
            "redis_latency_ms": percentiles(latencies),
            "cpu_total_pct": machine_pct,
            # in cores: what the pipeline + services, the load generator, and everything else on the machine used
            "cores_pipeline": round(sum(p["cpu_pct"] for p in processes.values()) / 100, 2),
            "cores_load_generator": round(own.get("cpu_pct", 0.0) / 100, 2),
            "cores_other": round(
                max(
                    0.0,
                    machine_pct * CORES / 100
                    - sum(p["cpu_pct"] for p in processes.values()) / 100
                    - own.get("cpu_pct", 0.0) / 100,
                ),
                2,
            ),
            "processes": processes,
        }
        prev.update(mono=now, confirmed=confirmed, counters=counters)
        self.intervals.append(row)
        lat = row["redis_latency_ms"]
        console.print(
            f"[dim]{t:7.0f}s {phase:7}[/] pub {row['rates']['published']:7.0f}/s"
            f"  stored {row['rates']['stored']:7.0f}/s"
            f"  backlog {row['backlog_stored']:7.0f}  lag stream {row['stream_lag']} sink {row['sink_lag']}"
            f"  p99 {lat.get('p99', '-')} ms  cores: pipeline {row['cores_pipeline']:.2f}"
            f" load {row['cores_load_generator']:.2f} other {row['cores_other']:.2f}"
        )
        return row

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        a = self.args
        duration = a.minutes * 60
        pipeline = [n for n in self.programs() if n != "simulator"]
        targets = [] if a.no_kill else self.kill_targets(pipeline)
        self.service_names = self.services()
        watcher = ProgramWatcher(self.stack.supervisor, pipeline + self.service_names)
        killer = Killer(self.stack.supervisor, targets, self.rng)
        self._probe()
        self.base = {k: v for k, v in (self._read_counters() or {}).items()}
        for c in COUNTERS.values():
            self.base.setdefault(c, 0.0)
        psutil.cpu_percent(None)
        console.print(
            f"soak: {a.rate:.0f} readings/s for {a.minutes:g} min, {a.devices} devices (prefix {self.tag}), "
            f"{a.gateways} gateway(s), {a.workers} stream worker(s); kill targets: {', '.join(targets) or 'none'}"
        )
        pub_settings = with_local_credentials(self.settings, "simulator")
        self.publisher = Publisher(pub_settings, self.tag, a.devices, a.rate, duration, a.publishers)
        self.self_sampler = ProcessSampler({"soak": os.getpid()})
        t0 = time.monotonic()
        prev = {"mono": t0, "confirmed": 0, "counters": dict(self.base)}
        next_sample = t0 + a.sample_every
        next_kill = t0 + a.kill_every * self.rng.uniform(0.7, 1.3)
        # publishing: bounded by the duration plus the publisher's own PUBACK wait
        while time.monotonic() - t0 < duration + 90:
            time.sleep(0.5)
            now = time.monotonic()
            killer.follow()
            killer.watch(now - t0)
            if self.publisher.finished:
                break
            if targets and now >= next_kill and now - t0 < duration - a.quiet_tail:
                kill = killer.kill_one(now - t0)
                if kill:
                    console.print(f"[bold red]{now - t0:7.0f}s kill -9 {kill.program} (pid {kill.pid})[/]")
                next_kill = now + a.kill_every * self.rng.uniform(0.7, 1.3)
            if now >= next_sample:
                self.sample(now - t0, "publish", watcher, prev)
                next_sample += a.sample_every
        publish_end = time.monotonic() - t0
        result = self.publisher.result(timeout=120)
        self.notes += result.errors
        expected = sum(seq - result.seq0 for seq in result.last_seq.values())
        confirmed = int(result.stats.get("confirmed", 0))
        console.print(
            f"publishing done after {publish_end:.0f}s: {confirmed:,} readings acknowledged "
            f"({int(result.stats.get('unconfirmed_messages', 0))} messages unacknowledged); draining …"
        )
        # drain: until every acknowledged reading is stored and Redis shows every device's last reading
        drain_start = time.monotonic()
        check: dict = {}
        mismatches: list[dict] = []
        drained = False
        while time.monotonic() - drain_start < a.drain_timeout:
            killer.follow()
            killer.watch(time.monotonic() - t0)
            try:
                check = self.ingest_check()
                mismatches = self.redis_mismatches(result.last_seq)
            except (httpx.HTTPError, redis.RedisError) as exc:
                self.notes.append(f"drain check failed once: {exc}")
            if check.get("readings", 0) >= confirmed and not mismatches:
                drained = True
                break
            if time.monotonic() >= next_sample:
                self.sample(time.monotonic() - t0, "drain", watcher, prev)
                next_sample = time.monotonic() + a.sample_every
            time.sleep(2.0)
        drain_s = round(time.monotonic() - drain_start, 1)
        self.sample(time.monotonic() - t0, "drained" if drained else "end", watcher, prev)
        killer.follow(give_up_s=0)
        return self.report(result, expected, confirmed, check, mismatches, drained, drain_s, publish_end, killer)

    # --------------------------------------------------------------------------------------------- report
    def report(self, result, expected, confirmed, check, mismatches, drained, drain_s, publish_end, killer) -> dict:
        a = self.args
        warmup = a.warmup if a.warmup is not None else min(120.0, a.minutes * 60 / 4)
        publish_rows = [r for r in self.intervals if r["phase"] == "publish"]
        stats = result.stats
        achieved = stats.get("confirmed", 0) / stats["elapsed"] if stats.get("elapsed") else 0.0
        stored = int(check.get("readings", 0))
        lost = max(0, confirmed - stored)
        # steady state only: the drain's verification queries (whole-prefix scans in the API's embedded
        # ClickHouse) raise the API's RSS by design, so they are not part of the judgement
        rss = rss_flatness(publish_rows, warmup, a.rss_limit)
        pipeline = [n for n in rss if n not in self.service_names]
        floor = a.lag_floor_s * a.rate
        backlog = lag_stretches(self.intervals, "backlog_stored", floor)
        stream_lag = lag_stretches(self.intervals, "stream_lag", float("inf"))
        sink_lag = lag_stretches(self.intervals, "sink_lag", float("inf"))
        p99s = [r["redis_latency_ms"].get("p99") for r in publish_rows if r["redis_latency_ms"]]
        not_back = [k for k in killer.kills if k.restarted_after_s is None]
        other = sorted(r["cores_other"] for r in publish_rows)
        other_median = other[len(other) // 2] if other else 0.0
        if other_median > 0.3:
            self.notes.append(
                f"the machine was shared: other processes used {other_median:.2f} of {CORES} cores (median while "
                "publishing), so lag and latency are worse than on a quiet machine"
            )
        criteria = {
            "load delivered": {
                "pass": result.exact and achieved >= 0.98 * a.rate,
                "detail": f"{achieved:,.0f} of {a.rate:,.0f} readings/s acknowledged; "
                f"{int(stats.get('unconfirmed_messages', 0))} messages unacknowledged, "
                f"{int(stats.get('errors', 0))} publish errors",
            },
            "zero loss (ClickHouse)": {
                "pass": result.exact
                and lost == 0
                and stored == confirmed == expected
                and check.get("missing_in_sequence", 1) == 0,
                "detail": f"{stored:,} of {confirmed:,} acknowledged readings stored, {lost} "
                + ("lost" if drained else "not stored by the end of the drain (lost or still in flight)")
                + ", "
                f"{check.get('missing_in_sequence', '?')} missing in sequence, {check.get('devices', '?')} devices",
            },
            "Redis latest = last reading": {
                "pass": not mismatches and bool(result.last_seq),
                "detail": f"{len(result.last_seq) - len(mismatches)} of {len(result.last_seq)} devices",
            },
            f"RSS flat (<= {100 * a.rss_limit:.0f} % growth)": {
                "pass": all(rss[n]["flat"] is not False for n in pipeline) and any(rss[n]["flat"] for n in pipeline),
                "detail": ", ".join(f"{n} {rss[n]['worst_growth_pct']:+.1f} %" for n in pipeline if rss[n]["judged"])
                or "too short to judge",
            },
            "lag bounded": {
                "pass": drained and backlog["longest_above_floor_s"] <= a.max_behind,
                "detail": f"backlog peak {backlog['peak']:,.0f} readings at {backlog['peak_t']}s, longest above "
                f"{a.lag_floor_s:g} s of traffic {backlog['longest_above_floor_s']:.0f} s; drained in {drain_s} s",
            },
            "no crash besides the kills": {
                "pass": not killer.unexpected,
                "detail": ", ".join(f"{u['program']} at {u['t']:.0f}s" for u in killer.unexpected[:8])
                + (f" … ({len(killer.unexpected)} in all)" if len(killer.unexpected) > 8 else "")
                or "none",
            },
            "killed processes restarted": {
                "pass": not not_back,
                "detail": f"{len(killer.kills) - len(not_back)} of {len(killer.kills)} back; restart "
                f"{max((k.restarted_after_s or 0 for k in killer.kills), default=0):.1f} s at most",
            },
        }
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": {
                "cpus": psutil.cpu_count(),
                "memory_gb": round(psutil.virtual_memory().total / 2**30),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "config": {
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                "warmup_s": warmup,
                "device_prefix": self.tag,
                "kafka_storage": str(getattr(self.settings, "kafka_storage", "memory")),
            },
            "pass": all(c["pass"] for c in criteria.values()),
            "criteria": criteria,
            "publish": {
                **stats,
                "achieved_rate": round(achieved, 1),
                "expected_from_sequences": expected,
                "publish_end_s": round(publish_end, 1),
            },
            "verification": {
                "confirmed": confirmed,
                "stored": stored,
                "lost": lost,
                "duplicate_rows": check.get("duplicate_rows"),
                "missing_in_sequence": check.get("missing_in_sequence"),
                "clickhouse_latency_ms": check.get("latency_ms"),
                "redis_mismatches": len(mismatches),
                "redis_mismatch_examples": mismatches[:10],
                "drained": drained,
                "drain_s": drain_s,
            },
            "cores_other_median": other_median,
            "lag": {"backlog_stored": backlog, "stream_lag": stream_lag, "sink_lag": sink_lag},
            "redis_latency_p99_ms": {"max_interval": max(p99s, default=None), "intervals": p99s},
            "rss": rss,
            "kills": [vars(k) for k in killer.kills],
            "unexpected_restarts": killer.unexpected,
            "notes": self.notes,
            "intervals": self.intervals,
        }


# ------------------------------------------------------------------------------------------------- output
def print_report(report: dict) -> None:
    rows = [r for r in report["intervals"]]
    step = max(1, len(rows) // 40)
    table = Table(
        "t s",
        "phase",
        "published/s",
        "MQTT in/s",
        "processed/s",
        "stored/s",
        "backlog",
        "stream lag",
        "sink lag",
        "Redis p50/p99 ms",
        "cores pipeline/load/other",
        title="timeline (every row)" if step == 1 else f"timeline (every {step}th row)",
    )
    for r in rows[::step]:
        lat = r["redis_latency_ms"]
        table.add_row(
            f"{r['t']:.0f}",
            r["phase"],
            f"{r['rates']['published']:,.0f}",
            f"{r['rates']['mqtt_in']:,.0f}",
            f"{r['rates']['processed']:,.0f}",
            f"{r['rates']['stored']:,.0f}",
            f"{r['backlog_stored']:,.0f}",
            f"{r['stream_lag']}",
            f"{r['sink_lag']}",
            f"{lat.get('p50', '-')}/{lat.get('p99', '-')}",
            f"{r['cores_pipeline']:.2f}/{r['cores_load_generator']:.2f}/{r['cores_other']:.2f}",
        )
    console.print(table)
    kills = Table("t s", "program", "pid", "restarted after s", "new pid", title="kill log")
    for k in report["kills"]:
        kills.add_row(f"{k['t']:.0f}", k["program"], str(k["pid"]), str(k["restarted_after_s"]), str(k["new_pid"]))
    console.print(kills)
    rss = Table(
        "program",
        "lives",
        "judged life (pid, from-to s)",
        "RSS first MB",
        "RSS last MB",
        "growth",
        "flat",
        title=f"RSS while publishing, after warm-up ({report['config']['warmup_s']:.0f} s per life; "
        "services for information)",
    )
    for name, r in sorted(report["rss"].items()):
        if not r["judged"]:
            rss.add_row(name, str(r["lives"]), "too short", "-", "-", "-", "-")
        for j in r["judged"]:
            rss.add_row(
                name,
                str(r["lives"]),
                f"{j['pid']} {j['from_t']:.0f}-{j['to_t']:.0f}",
                f"{j['first_mb']:.0f}",
                f"{j['last_mb']:.0f}",
                f"{j['growth_pct']:+.1f} %",
                "yes" if r["flat"] else "[red]no[/]",
            )
    console.print(rss)
    v = report["verification"]
    lag = report["lag"]
    console.print(
        f"stored {v['stored']:,} / acknowledged {v['confirmed']:,}: lost {v['lost']}, duplicate rows "
        f"{v['duplicate_rows']}, Redis mismatches {v['redis_mismatches']}; "
        f"max stream lag {lag['stream_lag']['peak']:,.0f} "
        f"records at {lag['stream_lag']['peak_t']}s, max sink lag {lag['sink_lag']['peak']:,.0f} at "
        f"{lag['sink_lag']['peak_t']}s; Redis p99 worst interval {report['redis_latency_p99_ms']['max_interval']} ms"
    )
    verdict = Table("criterion", "result", "detail", title="soak verdict")
    for name, c in report["criteria"].items():
        verdict.add_row(name, "[green]pass[/]" if c["pass"] else "[red]FAIL[/]", c["detail"])
    console.print(verdict)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[bold]{'PASS' if report['pass'] else 'FAIL'}[/]")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["intervals"]
    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(5, 1, figsize=(12, 15), sharex=True)
    ax = axes[0]
    for key, label in [
        ("published", "acknowledged by broker"),
        ("mqtt_in", "MQTT in (gateway)"),
        ("processed", "stream processed"),
        ("stored", "stored in ClickHouse"),
    ]:
        ax.plot(t, [r["rates"][key] for r in rows], label=label)
    ax.set_ylabel("readings/s")
    ax.set_title("rate per interval")
    ax = axes[1]
    ax.plot(t, [r["backlog_stored"] for r in rows], label="backlog: acknowledged - stored (readings)")
    ax.plot(t, [r["stream_lag"] or 0 for r in rows], label="stream.lag (records)")
    ax.plot(t, [r["sink_lag"] or 0 for r in rows], label="sink.lag (records)")
    ax.set_ylabel("lag")
    ax.set_title("lag")
    ax = axes[2]
    for name in sorted({n for r in rows for n in r["processes"]}):
        ax.plot(t, [r["processes"].get(name, {}).get("rss_mb", float("nan")) for r in rows], label=name)
    ax.set_ylabel("RSS MB")
    ax.set_yscale("log")
    ax.set_title("RSS per program (a gap = the interval of a restart)")
    ax = axes[3]
    for q, style in (("p50", "-"), ("p99", "--")):
        ax.plot(t, [r["redis_latency_ms"].get(q, float("nan")) for r in rows], style, label=f"sensor -> Redis {q}")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("latency per interval")
    ax = axes[4]
    ax.stackplot(
        t,
        [r["cores_pipeline"] for r in rows],
        [r["cores_load_generator"] for r in rows],
        [r["cores_other"] for r in rows],
        labels=["pipeline + services", "load generator (this script)", "other processes on the machine"],
        alpha=0.7,
    )
    ax.set_ylim(0, CORES)
    ax.set_ylabel("CPU cores")
    ax.set_xlabel("minutes")
    ax.set_title("CPU")
    for ax in axes:
        for k in report["kills"]:
            ax.axvline(k["t"] / 60, color="red", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper right")
    for k in report["kills"]:
        axes[0].annotate(
            k["program"],
            (k["t"] / 60, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="red",
            va="top",
            ha="right",
        )
    cfg = report["config"]
    fig.suptitle(
        f"iotp soak: {cfg['rate']:.0f} readings/s, {cfg['minutes']:g} min, kill every ~{cfg['kill_every']:.0f} s"
        f" — {'PASS' if report['pass'] else 'FAIL'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="iotp-soak-"))
    settings = soak_settings(tmp / "state", args.kafka_storage)
    stack = LocalStack(settings)

    def on_term(*_):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    soak: Soak | None = None
    report = None
    try:
        console.print(f"starting the stack in {tmp} …")
        # the stack's own background simulator is stopped at once: the soak publishes with its own fleet
        stack.up(
            simulate_args=["--devices", "1", "--rate", "1", "--quiet"], gateways=args.gateways, workers=args.workers
        )
        stack.supervisor.stop("simulator")
        stack.wait_api()
        soak = Soak(args, settings, stack)
        report = soak.run()
    except (KeyboardInterrupt, Interrupted):
        console.print("[yellow]interrupted: tearing the stack down[/]")
    finally:
        if soak is not None:
            if soak.publisher is not None:
                soak.publisher.stop()
            if soak.probe is not None:
                soak.probe.close()
        try:
            stack.down()
        finally:
            if args.keep_state or (report is not None and not report["pass"]):
                console.print(f"state dir kept (logs in {tmp / 'state' / 'run' / 'logs'})")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    if report is None:
        return 130
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    plot(report, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
