"""Stream worker throughput by Kafka record mode: device records vs partition records, side by side.

Run:  .venv/bin/python benchmarks/stream_modes.py [--devices 20000] [--rounds 2]
      [--device-seconds 3] [--partition-seconds 30] [--profile DIR]

One Faust worker (``iotp stream``) drains a readings topic pre-loaded with the data of ``--devices``
climate devices sending 1 reading per second each (3 metrics), exactly as the gateway batches it with
its default 200 ms linger:

* ``device`` mode (the default contract): one record per device per linger window = 1 reading per record
  (``--device-seconds`` of data; device mode is ~10x slower, so it gets less data to keep the run short);
* ``partition`` mode (``IOTP_KAFKA_RECORD_MODE=partition``): one record per partition per 200 ms window
  carrying the device batches of every device of that partition (``iotp.kafka.partition_for``), i.e.
  ~devices/partitions/5 device batches of 1 reading each (``--partition-seconds`` of data).

Variants run interleaved, ``--rounds`` times each (the machine is shared: compare within one run). Per run:
the readings rate from the worker's own Redis counters (``stream.readings``, polled every 50 ms, written
every 0.5 s: rate from the first sample to the last, so ~0.5 s granularity), the worker's CPU seconds per
reading (psutil, user+sys; less noisy than wall time on a shared machine), and the aggregates and alerts
produced (the same data must give the same windows in both modes). ``--profile DIR`` runs every worker
under ``py-spy record`` (raw collapsed stacks, one file per run; ``--profile-idle`` adds the idle samples and
thread names, to see where the worker waits). A variant written ``main:NAME`` runs NAME's settings on the
code under ``--baseline-root`` (e.g. a checkout of the main branch): before/after in one interleaved run.
Prints a table and writes ``benchmarks/results/stream_modes.json``. Starts its own Redis and Kafka-wire
broker (memory storage) on free loopback ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import redis

from benchmarks.stream_throughput import isolated_settings
from infra.kafka_admin import create_topics_sync
from infra.stack import LocalStack, loopback_settings, settings_env
from iotp.kafka import make_producer, partition_for
from iotp.schema import encode_batch, encode_partition_batch
from iotp.settings import Settings
from iotp.topics import redis_names

RESULTS = Path(__file__).resolve().parent / "results" / "stream_modes.json"
LINGER_MS = 200

# name -> (record mode, settings overrides for the worker)
# (a partition record carries ~1000 readings here, so its take batch is counted in far fewer records)
VARIANTS: dict[str, tuple[str, dict]] = {
    "device": ("device", {}),
    "device-take2000": ("device", {"stream_take_max": 2000}),
    "device-tuned": (
        "device",
        {"stream_take_max": 2000, "stream_buffer_maxsize": 16384, "stream_max_poll_records": 2000},
    ),
    # the flushes as before issue 12's pipelining: one at a time, in line, a snapshot with each
    "partition-take20-serial": (
        "partition",
        {"stream_take_max": 20, "stream_snapshot_interval_s": 0.0, "stream_pipeline_flushes": False},
    ),
    "partition-take20": ("partition", {"stream_take_max": 20}),
    "partition-take100": ("partition", {"stream_take_max": 100}),
}


def readings_of(devices: int, seconds: int, t0: int):
    """Per linger window: the readings of every device due in it (1 reading per device per second, device
    phases spread over the second), as (device index, reading dict)."""
    rng = random.Random(1)
    windows_per_s = 1000 // LINGER_MS
    per_window = [range(w * devices // windows_per_s, (w + 1) * devices // windows_per_s) for w in range(5)]
    for second in range(seconds):
        for w in range(windows_per_s):
            rows = []
            for d in per_window[w]:
                seq = second + 1
                ts = t0 + second * 1000 + w * LINGER_MS + d % LINGER_MS
                rows.append(
                    (
                        d,
                        {
                            "id": f"bench-{d}:{ts}:{seq}",
                            "seq": seq,
                            "ts": ts,
                            "rx": ts,
                            "metrics": {
                                "temperature": round(21 + rng.gauss(0, 0.2), 3),
                                "humidity": round(45 + rng.gauss(0, 0.5), 3),
                                "co2": round(500 + rng.gauss(0, 8), 2),
                            },
                        },
                    )
                )
            yield rows


async def fill(settings: Settings, mode: str, devices: int, seconds: int) -> tuple[int, int]:
    """Produce the data as the gateway would in ``mode``; returns (records, readings)."""
    producer = make_producer(settings)
    await producer.start()
    t0 = int(time.time() * 1000) - 3_600_000
    records = readings = 0
    partitions = settings.kafka_partitions
    try:
        for window, rows in enumerate(readings_of(devices, seconds, t0)):
            readings += len(rows)
            # record time = when the gateway would have sent it: a backlog an hour old, so the worker's wall
            # clock does not close windows under it (it does that only on partitions that are caught up)
            at = t0 + (window + 1) * LINGER_MS
            if mode == "device":
                for d, row in rows:
                    await producer.send(
                        settings.topic_readings,
                        key=f"bench-{d}".encode(),
                        value=encode_batch(f"bench-{d}", "climate", [row]),
                        timestamp_ms=at,
                    )
                    records += 1
            else:
                groups: dict[int, list[bytes]] = {}
                for d, row in rows:
                    device_id = f"bench-{d}"
                    p = partition_for(device_id.encode(), partitions)
                    groups.setdefault(p, []).append(encode_batch(device_id, "climate", [row]))
                for p, encoded in groups.items():
                    value = encode_partition_batch(encoded)
                    await producer.send(settings.topic_readings, value=value, partition=p, timestamp_ms=at)
                    records += 1
        await producer.flush()
    finally:
        await producer.stop()
    return records, readings


def run_one(
    base: Settings,
    tmp: Path,
    variant: str,
    devices: int,
    seconds: int,
    timeout: float,
    profile: Path | None,
    baseline_root: Path | None = None,
    profile_idle: bool = False,
):
    root, name = (baseline_root, variant.removeprefix("main:")) if variant.startswith("main:") else (None, variant)
    mode, overrides = VARIANTS[name]
    s, tag = isolated_settings(base, kafka_record_mode=mode, **overrides)
    create_topics_sync(s)
    records, readings = asyncio.run(fill(s, mode, devices, seconds))
    r = redis.Redis.from_url(s.redis_url, decode_responses=True, socket_timeout=30)
    stats = redis_names(s).stats_key
    env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
    if root is not None:  # the baseline's code: its iotp_cli, stream_jobs, iotp first on the path
        env["PYTHONPATH"] = str(root)
    log = (tmp / f"stream-{tag}.log").open("wb")
    cmd = [sys.executable, "-m", "iotp_cli", "stream", "--loglevel", "warning", "--metrics-port", "0"]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = profile / f"{variant.replace(':', '-')}-{tag}.txt"
        extra = ["--idle", "--threads"] if profile_idle else []
        cmd = [spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", *extra, "-o", str(out), "--", *cmd]
    load_before = os.getloadavg()[0]
    # cwd too: ``python -m`` puts the current directory first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    first = last = None
    cpu0 = cpu1 = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if worker is None:
                worker = _worker(proc)
            try:
                done = int(r.hget(stats, "stream.readings") or 0)
            except redis.RedisError:  # Redis busy with a large MULTI/EXEC of the worker: ask again
                continue
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
                cpu0 = _cpu(worker)
            if done >= readings:
                last = (now, done)
                cpu1 = _cpu(worker)
                break
            time.sleep(0.05)
    finally:
        if profile is not None and worker is not None:  # py-spy writes its profile when the worker exits
            worker.terminate()
        else:
            os.killpg(proc.pid, 15)
        proc.wait(120)
    row = {"variant": variant, "mode": mode, "overrides": overrides, "devices": devices, "seconds_of_data": seconds}
    row["code"] = str(root) if root is not None else "this tree"
    row["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # at the start, at the end
    row.update(records=records, readings=readings, readings_per_record=round(readings / records, 1))
    if first is None or last is None:
        row["error"] = f"timed out after {timeout}s"
        return row
    elapsed = max(last[0] - first[0], 1e-3)
    counted = last[1] - first[1]
    row.update(
        readings_per_s=round(counted / elapsed),
        records_per_s=round(counted / row["readings_per_record"] / elapsed),
        elapsed_s=round(elapsed, 2),
        aggregates=int(r.hget(stats, "stream.aggregates") or 0),
        alerts=int(r.hget(stats, "stream.alerts") or 0),
    )
    if cpu0 is not None and cpu1 is not None:
        row["cpu_us_per_reading"] = round((cpu1 - cpu0) * 1e6 / max(counted, 1), 1)
        row["cpu_share"] = round((cpu1 - cpu0) / elapsed, 2)
    r.close()
    return row


def _worker(proc: subprocess.Popen) -> psutil.Process | None:
    """The Python worker process (the child of py-spy when profiling)."""
    try:
        p = psutil.Process(proc.pid)
        if "py-spy" in p.name():
            kids = p.children()
            return kids[0] if kids else None
        return p
    except psutil.Error:
        return None


def _cpu(p: psutil.Process | None) -> float | None:
    if p is None:
        return None
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name and "readings_per_s" in r]
        if not mine:
            continue
        rates = [r["readings_per_s"] for r in mine]
        cpu = [r["cpu_us_per_reading"] for r in mine if "cpu_us_per_reading" in r]
        share = [r["cpu_share"] for r in mine if "cpu_share" in r]
        out.append(
            {
                "variant": name,
                "runs": len(mine),
                "readings_per_record": mine[0]["readings_per_record"],
                "readings_per_s_median": round(statistics.median(rates)),
                "readings_per_s_min": min(rates),
                "readings_per_s_max": max(rates),
                "cpu_us_per_reading_median": round(statistics.median(cpu), 1) if cpu else None,
                "cpu_us_per_reading_min": min(cpu) if cpu else None,
                "cpu_us_per_reading_max": max(cpu) if cpu else None,
                "cpu_share_min": min(share) if share else None,
                "cpu_share_max": max(share) if share else None,
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=20000)
    parser.add_argument("--device-seconds", type=int, default=3)
    parser.add_argument("--partition-seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles into this directory")
    parser.add_argument("--profile-idle", action="store_true", help="py-spy: idle samples and threads too")
    parser.add_argument("--baseline-root", type=Path, default=None, help="code tree for the main:NAME variants")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n.removeprefix("main:") not in VARIANTS]
    if unknown or (any(n.startswith("main:") for n in names) and args.baseline_root is None):
        parser.error(f"unknown variants {unknown}, or main:NAME without --baseline-root")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iotp-stream-modes-") as tmpdir:
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
                    mode = VARIANTS[name.removeprefix("main:")][0]
                    seconds = args.device_seconds if mode == "device" else args.partition_seconds
                    rows.append(
                        run_one(
                            base,
                            tmp,
                            name,
                            args.devices,
                            seconds,
                            args.timeout,
                            args.profile,
                            args.baseline_root,
                            args.profile_idle,
                        )
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stack.down()
    summary = summarize(rows)
    print(f"\n{'variant':<30}{'rdg/rec':>8}{'readings/s median [min-max]':>32}{'CPU us/reading':>16}{'core':>12}")
    for s in summary:
        spread = f"{s['readings_per_s_median']:,} [{s['readings_per_s_min']:,}-{s['readings_per_s_max']:,}]"
        core = f"{s['cpu_share_min']}-{s['cpu_share_max']}"
        cpu = s["cpu_us_per_reading_median"]
        print(f"{s['variant']:<30}{s['readings_per_record']:>8}{spread:>32}{cpu!s:>16}{core:>12}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    note = f"one worker, {base.kafka_partitions} partitions, {os.cpu_count()} shared cores, {platform.python_version()}"
    if args.baseline_root is not None:
        note += f"; main:NAME variants ran the code under {args.baseline_root}"
    args.out.write_text(json.dumps({"summary": summary, "runs": rows, "note": note}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
