"""Ingestion benchmark: simulator maximum publish rate and gateway throughput with 1, 2 and 4 processes.

Run:  .venv/bin/python benchmarks/ingest_bench.py [--readings 40000] [--quick]

Starts its own Mosquitto / Redis / Kafka-wire broker (``infra.stack.LocalStack``) on free loopback ports
in a temporary directory, runs every variant in the same run, prints a table and writes
``benchmarks/results/ingest_bench.json``. Bounded: each variant has a hard timeout.

Method
- simulator: ``iotp simulate --rate 1e6`` (far above what it can do) for a fixed duration with 1 and 2
  worker processes, batch 1 and 10, QoS 0 and 1, nothing subscribed; the number is the simulator's own
  achieved readings/s after the socket was flushed.
- gateway: N gateway processes on one shared subscription with persistent sessions subscribe once and are
  killed; the simulator (2 workers, QoS 1, power meters) publishes a backlog that Mosquitto queues for
  them; the gateways restart and drain it. Throughput = readings forwarded between 10 % and 90 % of the
  backlog / the span of their gateway receive times (``rx``), so the publisher does not compete for the two
  cores. Then the readings topic is read back: lost = readings the broker acknowledged but Kafka does not
  hold, duplicates = extra copies (at-least-once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from benchmarks.publisher_bench import lean_command  # noqa: E402
from infra.kafka_admin import create_topics_sync  # noqa: E402
from infra.stack import LocalStack, loopback_settings, settings_env  # noqa: E402
from iotp.schema import device_batches  # noqa: E402
from iotp.settings import Settings  # noqa: E402

console = Console()
MQTT_VARIANTS = {  # the gateway's MQTT path (settings overrides)
    "v5": {"gateway_mqtt_protocol": "5", "mqtt_shared_property_tables": True, "gateway_mqtt_buffered": True},
    "v5-unbuffered": {
        "gateway_mqtt_protocol": "5",
        "mqtt_shared_property_tables": True,
        "gateway_mqtt_buffered": False,
    },
    "v5-stock": {"gateway_mqtt_protocol": "5", "mqtt_shared_property_tables": False, "gateway_mqtt_buffered": False},
    "v311": {"gateway_mqtt_protocol": "3.1.1"},
}

GC_VARIANTS = {  # the gateway's garbage collector thresholds (iotp/gc_tuning.py)
    "gc-tuned": {"gc_thresholds": (100_000, 20, 100)},
    "gc-stock": {"gc_thresholds": (700, 10, 10)},
}


def isolated(base: Settings) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(
        update=dict(
            topic_readings=f"b{tag}.readings",
            topic_deadletter=f"b{tag}.dlq",
            mqtt_topic_prefix=f"b{tag}/telemetry",
            mqtt_share_group=f"g{tag}",
            redis_prefix=f"b{tag}",
        )
    )
    create_topics_sync(s)
    return s


def iotp(settings: Settings, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "iotp_cli", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def simulate(settings: Settings, tmp: Path, *args: str, timeout: float = 120) -> dict:
    out = tmp / f"sim-{uuid.uuid4().hex[:6]}.json"
    proc = iotp(settings, "simulate", "--quiet", "--stats-json", str(out), *args, log=tmp / "sim.log")
    proc.wait(timeout)
    return orjson.loads(out.read_bytes())


async def forwarded(settings: Settings, expected: int, timeout: float) -> tuple[int, int, list[int]]:
    """Distinct and total readings on the readings topic (read back from the start), and the gateway receive
    times (``rx``, epoch ms) of the distinct ones."""
    consumer = AIOKafkaConsumer(
        settings.topic_readings, bootstrap_servers=settings.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    total = 0
    ids: set[str] = set()
    rx: list[int] = []
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline and len(ids) < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            got = False
            for recs in batches.values():
                for rec in recs:
                    for r in (r for b in device_batches(orjson.loads(rec.value)) for r in b["readings"]):
                        if r["id"] not in ids:
                            rx.append(r["rx"])
                        ids.add(r["id"])
                        total += 1
                        got = True
            if got:
                idle_since = time.monotonic()
            elif ids and time.monotonic() - idle_since > 15:
                break
    finally:
        await consumer.stop()
    return len(ids), total, rx


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _start_gateways(s: Settings, tmp: Path, ids: list[str]) -> list[subprocess.Popen]:
    logs = [tmp / f"{cid}-{uuid.uuid4().hex[:4]}.log" for cid in ids]
    procs = [
        iotp(s, "gateway", "--client-id", cid, "--metrics-port", "0", log=log)
        for cid, log in zip(ids, logs, strict=True)
    ]
    deadline = time.monotonic() + 60
    while not all(b"subscribed" in log.read_bytes() for log in logs if log.exists()) or not all(
        log.exists() for log in logs
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("gateways did not subscribe")
        time.sleep(0.1)
    return procs


def bench_gateways(base: Settings, tmp: Path, n: int, readings: int, batch: int) -> dict:
    """Gateway capacity without the publisher competing for the cores: the gateways subscribe once
    (persistent sessions), are killed, the backlog is published into Mosquitto, then the gateways come
    back and drain it. Rate = readings forwarded between 10 % and 90 % of the backlog / elapsed time."""
    s = isolated(base)
    ids = [f"bench-{n}-{i}-{uuid.uuid4().hex[:4]}" for i in range(n)]
    _stop(_start_gateways(s, tmp, ids), signal.SIGKILL)  # kill -9: the sessions keep their subscription
    sim = simulate(
        s,
        tmp,
        "--devices",
        "200",
        "--rate",
        "1000000",
        "--count",
        str(readings),
        "--qos",
        "1",
        "--workers",
        "2",
        "--batch",
        str(batch),
        "--seed",
        "1",
        "--mix",
        "power=1",
    )
    sent = int(sim["confirmed"])
    gws = _start_gateways(s, tmp, ids)
    try:
        count, total, rx = asyncio.run(forwarded(s, sent, timeout=300))
    finally:
        _stop(gws)
    # the gateways stamp every reading with its receive time: the 10-90 % span of those is the drain rate
    rx.sort()
    lo, hi = rx[int(len(rx) * 0.1)], rx[int(len(rx) * 0.9) - 1]
    rate = (int(len(rx) * 0.9) - int(len(rx) * 0.1)) / max((hi - lo) / 1000, 1e-3)
    return {
        "variant": f"gateway x{n}, batch {batch}",
        "gateways": n,
        "batch": batch,
        "readings_sent": sent,
        "readings_forwarded": count,
        "lost": sent - count,
        "duplicates": total - count,
        "readings_per_s": round(rate),
        "messages_per_s": round(rate / batch),
    }


def bench_gateway_cpu(base: Settings, tmp: Path, rate: float, seconds: float, devices: int) -> dict:
    """The gateway's CPU per message at a paced rate, as in the pipeline (not a backlog drain): one gateway,
    the lean publisher (its own process) sending ``devices`` power meters at ``rate`` msgs/s, QoS 1, for
    ``seconds``; CPU = the gateway process's user + system time from just before publishing until every
    reading is on Kafka, per MQTT message."""
    s = isolated(base)
    gw = _start_gateways(s, tmp, [f"cpu-{uuid.uuid4().hex[:6]}"])[0]
    try:
        proc = psutil.Process(gw.pid)
        stats_file = tmp / f"lean-{uuid.uuid4().hex[:6]}.json"
        env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
        before = sum(proc.cpu_times()[:2])
        subprocess.run(
            lean_command(tmp, devices, rate, seconds, stats_file), cwd=ROOT, env=env, check=True,
            timeout=seconds + 120, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        sent = int(orjson.loads(stats_file.read_bytes())["confirmed"])
        count, total, _rx = asyncio.run(forwarded(s, sent, timeout=120))
        cpu = sum(proc.cpu_times()[:2]) - before
    finally:
        _stop([gw])
    return {
        "variant": f"gateway x1 paced at {int(rate):,} msgs/s",
        "paced_rate": int(rate),
        "readings_sent": sent,
        "readings_forwarded": count,
        "lost": sent - count,
        "duplicates": total - count,
        "cpu_us_per_message": round(cpu / max(sent, 1) * 1e6, 1),
        "cpu_share": round(cpu / seconds, 3),
    }


def bench_simulator(base: Settings, tmp: Path, workers: int, batch: int, qos: int, duration: float) -> dict:
    s = isolated(base)
    st = simulate(
        s,
        tmp,
        "--devices",
        "1000",
        "--rate",
        "1000000",
        "--duration",
        str(duration),
        "--workers",
        str(workers),
        "--batch",
        str(batch),
        "--qos",
        str(qos),
        "--seed",
        "1",
    )
    return {
        "variant": f"simulator {workers}w, batch {batch}, QoS {qos}",
        "workers": workers,
        "batch": batch,
        "qos": qos,
        "readings_per_s": round(st["achieved_rate"]),
        "messages_per_s": round(st["messages"] / st["elapsed"]),
        "errors": st["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=40000, help="readings per gateway variant")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per simulator variant")
    parser.add_argument("--quick", action="store_true", help="fewer variants")
    parser.add_argument("--only", choices=["simulator", "gateways"], help="run one group of variants")
    parser.add_argument("--gateways", default="1,2,4", help="gateway process counts")
    parser.add_argument("--batches", default="1,10", help="readings per MQTT message of the gateway variants")
    parser.add_argument(
        "--record-modes", default="device", help="IOTP_KAFKA_RECORD_MODE of the gateway variants, interleaved"
    )
    parser.add_argument(
        "--mqtt-variants",
        default="v5",
        help="the gateway's MQTT path, interleaved: v5 (MQTT 5, shared property tables, buffered client: the "
        "default), v5-unbuffered (paho's own socket reads, writes and dispatch), v5-stock (also paho's "
        "per-message property tables), v311 (MQTT 3.1.1)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the gateway variants (interleaved)")
    parser.add_argument(
        "--paced",
        type=float,
        default=0,
        help="instead of the drain variants: the gateway's CPU per message at this paced rate (msgs/s), each "
        "--mqtt-variants / --record-modes variant, --rounds times, interleaved",
    )
    parser.add_argument("--paced-seconds", type=float, default=15.0)
    parser.add_argument(
        "--gc-variants",
        default="gc-tuned",
        help="paced only, interleaved: gc-tuned (the default), gc-stock (700, 10, 10)",
    )
    parser.add_argument("--paced-devices", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest_bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotp-bench-") as tmpdir:
        tmp = Path(tmpdir)
        base = loopback_settings(
            tmp / "state",
            gateway_metrics_port=0,
            # the broker's ACL covers every variant's own prefix b<tag>/telemetry; the gateway and simulator
            # processes take their MQTT accounts from this state dir (infra/mqtt_auth.py)
            mqtt_topic_prefix="+/telemetry",
        )
        stack = LocalStack(base)
        stack.up()
        rows: list[dict] = []
        try:
            for workers, batch, qos in [(1, 1, 0), (2, 1, 0), (1, 1, 1), (2, 1, 1), (1, 10, 0), (2, 10, 0)]:
                if args.only == "gateways":
                    break
                if args.quick and (qos or (workers == 2 and batch == 10)):
                    continue
                rows.append(bench_simulator(base, tmp, workers, batch, qos, args.duration))
                console.print(rows[-1])
            gateway_variants = [
                (batch, n, mode, mqtt)
                for batch in map(int, args.batches.split(","))
                for n in map(int, args.gateways.split(","))
                for mode in args.record_modes.split(",")
                for mqtt in args.mqtt_variants.split(",")
                if not (args.quick and batch == 10 and n != 1)
            ]
            paced_variants = [
                (mode, mqtt, gcv)
                for mode in args.record_modes.split(",")
                for mqtt in args.mqtt_variants.split(",")
                for gcv in args.gc_variants.split(",")
            ]
            if args.paced:  # the gateway's CPU per message at a paced rate, instead of its drain rates
                gateway_variants = []
            else:
                paced_variants = []
            if args.only == "simulator":
                gateway_variants = []
            for _ in range(args.rounds):
                for mode, mqtt, gcv in paced_variants:
                    update = {"kafka_record_mode": mode, **MQTT_VARIANTS[mqtt], **GC_VARIANTS[gcv]}
                    row = bench_gateway_cpu(
                        base.model_copy(update=update), tmp, args.paced, args.paced_seconds, args.paced_devices
                    )
                    row.update(
                        variant=f"{row['variant']}, {mode} records, {mqtt}, {gcv}", mqtt=mqtt, record_mode=mode, gc=gcv
                    )
                    rows.append(row)
                    console.print(rows[-1])
                for batch, n, mode, mqtt in gateway_variants:
                    update = {"kafka_record_mode": mode, **MQTT_VARIANTS[mqtt]}
                    row = bench_gateways(base.model_copy(update=update), tmp, n, args.readings, batch)
                    row["mqtt"] = mqtt
                    if mode != "device":
                        row.update(variant=f"{row['variant']}, {mode} records", record_mode=mode)
                    if mqtt != "v5":
                        row.update(variant=f"{row['variant']}, {mqtt}")
                    rows.append(row)
                    console.print(rows[-1])
        finally:
            stack.down()
    table = Table("variant", "readings/s", "messages/s", "notes", title="ingest benchmark (loopback, 2 cores)")
    for r in rows:
        if "cpu_us_per_message" in r:
            table.add_row(
                r["variant"], "", f"{r['paced_rate']:,}",
                f"{r['cpu_us_per_message']} us CPU per message ({r['cpu_share']:.0%} of a core); lost {r['lost']}"
                f" of {r['readings_sent']:,}, duplicates {r['duplicates']}",
            )  # fmt: skip
            continue
        if "gateways" in r:
            note = f"lost {r['lost']} of {r['readings_sent']:,}, duplicates {r['duplicates']}"
        else:
            note = f"errors {r['errors']}"
        table.add_row(r["variant"], f"{r['readings_per_s']:,}", f"{r['messages_per_s']:,}", note)
    console.print(table)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.exists():  # keep the other group's rows from the previous run
        keep = [r for r in json.loads(out.read_text())["results"] if ("gateways" in r) != (args.only == "gateways")]
        rows = keep + rows
    out.write_text(
        json.dumps({"host_cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": rows}, indent=2)
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
