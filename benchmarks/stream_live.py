"""Stream worker at a live rate: does one worker keep up, and how long from Kafka to Redis?

Run:  .venv/bin/python benchmarks/stream_live.py [--devices 15000] [--seconds 30] [--variants partition]

Where ``benchmarks/stream_modes.py`` drains a backlog (throughput), this paces the data as it would arrive:
``--devices`` climate devices, 1 reading per device per second, grouped as the gateway does with its 200 ms
linger into one partition record per partition per window (``IOTP_KAFKA_RECORD_MODE=partition``), produced
every 200 ms by a separate process, each reading's ``rx`` = the time its record was produced. One worker
(``iotp stream``) consumes it; this process subscribes to the readings pub/sub channel, which the worker
publishes in the same MULTI/EXEC as the latest state, and takes ``now - rx`` per message: Kafka produce ->
Redis, i.e. sensor -> Redis minus the gateway (whose linger adds 0-200 ms before the record exists).

Per variant: latency p50 / p99 / max (ms, after a 5 s warm-up), the worker's readings/s and CPU share, and
whether it kept up (every produced reading applied within 5 s of the end). Variants run one after the other
on one stack; ``main:NAME`` runs NAME's settings on the code under ``--baseline-root``. Writes
``benchmarks/results/stream_live.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psutil
import redis
import redis.asyncio as aioredis

from benchmarks.stream_throughput import isolated_settings
from infra.kafka_admin import create_topics_sync
from infra.stack import LocalStack, loopback_settings, settings_env
from iotp.kafka import make_producer, partition_for
from iotp.schema import device_batches, encode_batch, encode_partition_batch
from iotp.settings import Settings
from iotp.topics import redis_names

RESULTS = Path(__file__).resolve().parent / "results" / "stream_live.json"
LINGER_MS = 200
WARMUP_S = 5.0

# name -> settings overrides for the worker (partition records throughout)
VARIANTS: dict[str, dict] = {
    "partition": {},
    "partition-serial": {"stream_snapshot_interval_s": 0.0, "stream_pipeline_flushes": False},
    "partition-snapshot0.5s": {"stream_snapshot_interval_s": 0.5},
    "partition-snapshot10s": {"stream_snapshot_interval_s": 10.0},
    "partition-gc-stock": {"gc_thresholds": (700, 10, 10)},  # CPython's own collector thresholds
    "partition-idle-close0": {"stream_window_idle_close_s": 0.0},  # the wall clock closes every due window
    "partition-unstaggered": {"stream_snapshot_stagger": False},  # every partition's snapshot at once
}


async def _produce(settings: Settings, devices: int, seconds: float) -> int:
    producer = make_producer(settings)
    await producer.start()
    partitions = settings.kafka_partitions
    windows_per_s = 1000 // LINGER_MS
    groups = [range(w * devices // windows_per_s, (w + 1) * devices // windows_per_s) for w in range(windows_per_s)]
    parts = [partition_for(f"live-{d}".encode(), partitions) for d in range(devices)]
    start = time.monotonic()
    window = sent = 0
    try:
        while time.monotonic() - start < seconds:
            due = start + window * LINGER_MS / 1000
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = int(time.time() * 1000)
            seq = window // windows_per_s + 1
            by_partition: dict[int, list[bytes]] = {}
            for d in groups[window % windows_per_s]:
                reading = {
                    "id": f"live-{d}:{now}:{seq}",
                    "seq": seq,
                    "ts": now,
                    "rx": now,
                    "metrics": {"temperature": 21.0 + (d % 7) / 10, "humidity": 45.0 + seq % 3, "co2": 500.0 + d % 11},
                }
                by_partition.setdefault(parts[d], []).append(encode_batch(f"live-{d}", "climate", [reading]))
            for p, encoded in by_partition.items():
                await producer.send(settings.topic_readings, value=encode_partition_batch(encoded), partition=p)
                sent += len(encoded)
            window += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _producer_main(settings_json: str, devices: int, seconds: float, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_produce(Settings.model_validate_json(settings_json), devices, seconds)))


async def _listen(settings: Settings, stop: asyncio.Event, latencies: list[tuple[float, int, float]]) -> None:
    client = aioredis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(redis_names(settings).channel_readings)
    try:
        while not stop.is_set():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is None:
                continue
            now = time.time() * 1000
            for batch in device_batches(orjson.loads(msg["data"])):
                latencies.append((time.monotonic(), round(now - batch["readings"][0]["rx"]), now / 1000))
                break  # one reading per message: all of a record share the produce time
    finally:
        await pubsub.aclose()
        await client.aclose()


def _pct(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_one(base: Settings, tmp: Path, variant: str, devices: int, seconds: float, baseline_root: Path | None) -> dict:
    root, name = (baseline_root, variant.removeprefix("main:")) if variant.startswith("main:") else (None, variant)
    s, tag = isolated_settings(base, kafka_record_mode="partition", **VARIANTS[name])
    create_topics_sync(s)
    env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
    if root is not None:
        env["PYTHONPATH"] = str(root)
    log = (tmp / f"stream-{tag}.log").open("wb")
    cmd = [sys.executable, "-m", "iotp_cli", "stream", "--loglevel", "warning", "--metrics-port", "0"]
    # cwd too: ``python -m`` puts the current directory first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    stats = redis_names(s).stats_key
    row: dict = {"variant": variant, "devices": devices, "seconds": seconds, "overrides": VARIANTS[name]}
    row["code"] = str(root) if root is not None else "this tree"
    try:
        deadline = time.monotonic() + 90
        while not r.hget(stats, "stream.updated_ms"):  # the worker's first stats write: it is up
            if time.monotonic() > deadline:
                row["error"] = "worker not up"
                return row
            time.sleep(0.2)
        time.sleep(3.0)  # partitions assigned
        worker = psutil.Process(proc.pid)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        producer = multiprocessing.Process(target=_producer_main, args=(s.model_dump_json(), devices, seconds, queue))
        latencies: list[tuple[float, int, float]] = []  # (monotonic, latency ms, wall-clock s) per message

        async def measure() -> tuple[int, float, float, int]:
            stop = asyncio.Event()
            listener = asyncio.create_task(_listen(s, stop, latencies))
            await asyncio.sleep(0.5)
            load0 = os.getloadavg()[0]
            t0, cpu0, done0 = time.monotonic(), sum(worker.cpu_times()[:2]), int(r.hget(stats, "stream.readings") or 0)
            producer.start()
            sent = await asyncio.to_thread(queue.get)
            t1 = time.monotonic()
            end = t1 + 5.0
            done = done0
            while time.monotonic() < end and done - done0 < sent:
                await asyncio.sleep(0.1)
                done = int(r.hget(stats, "stream.readings") or 0)
            cpu1 = sum(worker.cpu_times()[:2])
            stop.set()
            await listener
            row["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            return sent, t1 - t0, cpu1 - cpu0, done - done0

        sent, elapsed, cpu, applied = asyncio.run(measure())
        producer.join(10)
        start = latencies[0][0] + WARMUP_S if latencies else 0
        lat = [ms for at, ms, _ in latencies if at >= start]
        row.update(
            produced=sent,
            applied=applied,
            kept_up=applied >= sent,
            readings_per_s=round(sent / elapsed),
            cpu_share=round(cpu / elapsed, 2),
            cpu_us_per_reading=round(cpu * 1e6 / max(applied, 1), 1),
            messages=len(lat),
        )
        if lat:
            row.update(
                latency_ms_p50=round(statistics.median(lat)), latency_ms_p99=_pct(lat, 0.99), latency_ms_max=max(lat)
            )
            # by the second of the wall clock within the 10 s window period: every device's 10 s windows end
            # at the same multiple of 10 s and close on event time 5 s (the grace) later, so if closing them
            # is what stalls the worker, the seconds after phase 5 stand out
            by_phase: dict[int, list[int]] = {}
            for at, ms, wall in latencies:
                if at >= start:
                    by_phase.setdefault(int(wall) % 10, []).append(ms)
            row["latency_ms_p99_by_phase"] = {phase: _pct(v, 0.99) for phase, v in sorted(by_phase.items())}
        return row
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
        r.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=15000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default="partition")
    parser.add_argument("--baseline-root", type=Path, default=None, help="code tree for the main:NAME variants")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    if any(n.removeprefix("main:") not in VARIANTS for n in names):
        parser.error(f"variants: {', '.join(VARIANTS)} (main:NAME with --baseline-root)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="iotp-stream-live-") as tmpdir:
        tmp = Path(tmpdir)
        base = loopback_settings(
            tmp / "state",
            kafka_storage="memory",
            gateway_metrics_port=0,
            stream_metrics_port=0,
        )
        stack = LocalStack(base)
        stack.up()
        try:
            for _ in range(args.rounds):
                for name in names:
                    rows.append(run_one(base, tmp, name, args.devices, args.seconds, args.baseline_root))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stack.down()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": rows, "cores": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
