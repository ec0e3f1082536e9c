"""Load generators side by side: what each costs per MQTT message, so the load test measures the pipeline.

Run:  .venv/bin/python benchmarks/publisher_bench.py [--rates 5000,10000,max] [--seconds 8] [--rounds 2]

Starts its own Mosquitto / Redis / Kafka-wire broker (``infra.stack.LocalStack``) on free loopback ports
in a temporary directory. For each offered rate (messages/s; ``max`` = as fast as it can) it runs, one
after the other and interleaved over ``--rounds``:

- ``simulator``: ``iotp simulate`` (paho-mqtt, MQTT 5), 1 worker process;
- ``lean``: ``python -m loadtest.lean_publisher`` (hand-framed MQTT 3.1.1), 1 process, its frames prepared
  before it publishes (the default since issue 12, session 6);
- ``lean-live``: the same with ``--no-prepare``: every reading made while publishing;

both with the same fleet (5,000 power meters, 1 reading per message, QoS 1) and nothing subscribed.
Measured: the achieved rate (the publisher's own stats: acknowledged messages / publishing time), the
publisher's CPU time per message over its publishing loop (``cpu_s`` of its stats: ``time.process_time``,
every thread, summed over workers) and over the whole process life (``getrusage(RUSAGE_CHILDREN)``:
imports and start-up included), and Mosquitto's CPU per message over the same run. Prints a table and writes
``benchmarks/results/publisher_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psutil
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.stack import LocalStack, loopback_settings, settings_env  # noqa: E402
from iotp.settings import Settings  # noqa: E402

console = Console()
DEVICES = 5000
MAX_RATE = 1_000_000.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(kind: str, tmp: Path, rate: float, seconds: float, stats: Path) -> list[str]:
    if kind == "simulator":
        return [
            sys.executable, "-m", "iotp_cli", "simulate", "--quiet", "--devices", str(DEVICES), "--mix", "power=1",
            "--rate", str(rate), "--duration", str(seconds), "--qos", "1", "--workers", "1", "--seed", "1",
            "--stats-json", str(stats),
        ]  # fmt: skip
    command = lean_command(tmp, DEVICES, rate, seconds, stats)
    return [*command, "--no-prepare"] if kind == "lean-live" else command


def lean_command(tmp: Path, devices: int, rate: float, seconds: float, stats: Path) -> list[str]:
    """The lean publisher as a process: ``devices`` power meters at ``rate`` msgs/s for ``seconds``, QoS 1,
    its stats written to ``stats`` (the scenario file goes into ``tmp``)."""
    scenario = tmp / f"lean-{uuid.uuid4().hex[:6]}.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {"fleet": {"devices": devices, "mix": {"power": 1.0}}, "rate_per_s": rate, "duration_s": seconds, "qos": 1}
        )
    )
    return [sys.executable, "-m", "loadtest.lean_publisher", "--scenario", str(scenario), "--stats-json", str(stats)]


def run_one(settings: Settings, tmp: Path, kind: str, rate: float, seconds: float, mosquitto: psutil.Process) -> dict:
    stats_file = tmp / f"{kind}-{uuid.uuid4().hex[:6]}.json"
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    broker_before = sum(mosquitto.cpu_times()[:2])
    cpu_before = _children_cpu()
    subprocess.run(
        _command(kind, tmp, rate, seconds, stats_file), cwd=ROOT, env=env, check=True, timeout=seconds + 120,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cpu = _children_cpu() - cpu_before
    broker = sum(mosquitto.cpu_times()[:2]) - broker_before
    stats = orjson.loads(stats_file.read_bytes())
    messages = max(int(stats["messages"]), 1)
    return {
        "publisher": kind,
        "offered": "max" if rate >= MAX_RATE else int(rate),
        "messages": messages,
        "acknowledged": int(stats["confirmed"]),
        "messages_per_s": round(messages / stats["elapsed"]),
        # the publishing loop (and its final PUBACK wait), as the publisher measured it (process_time)
        "cpu_us_per_message": round(stats["cpu_s"] / messages * 1e6, 1),
        "cpu_share_while_publishing": round(stats["cpu_s"] / stats["elapsed"], 2),
        # the process's whole life: imports, fleet, connect, worker start-up too
        "process_cpu_us_per_message": round(cpu / messages * 1e6, 1),
        "mosquitto_us_per_message": round(broker / messages * 1e6, 1),
        "prepare_s": float(stats.get("prepare_s", 0.0)),  # before publishing: in the whole-process column only
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5000,10000,max", help="offered messages/s, comma separated; max = flat out")
    parser.add_argument("--seconds", type=float, default=8.0, help="publishing time per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--publishers", default="simulator,lean-live,lean")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "publisher_bench.json")
    args = parser.parse_args()
    rates = [MAX_RATE if r.strip() == "max" else float(r) for r in args.rates.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="iotp-pubbench-") as tmpdir:
        tmp = Path(tmpdir)
        base = loopback_settings(
            tmp / "state",
            kafka_storage="memory",
        )
        stack = LocalStack(base)
        stack.up()
        try:
            from infra.mqtt_auth import with_local_credentials

            settings = with_local_credentials(base, "simulator")
            pid = next(row["pid"] for row in stack.status() if row["name"] == "mosquitto")
            mosquitto = psutil.Process(pid)
            for _ in range(args.rounds):
                for rate in rates:
                    for kind in args.publishers.split(","):
                        rows.append(run_one(settings, tmp, kind, rate, args.seconds, mosquitto))
                        console.print(rows[-1])
        finally:
            stack.down()
    summary = []
    keys = sorted(
        {(r["offered"] if r["offered"] == "max" else int(r["offered"]), r["publisher"]) for r in rows}, key=str
    )
    for offered, kind in keys:
        runs = [r for r in rows if r["offered"] == offered and r["publisher"] == kind]
        summary.append(
            {
                "publisher": kind,
                "offered": offered,
                "runs": len(runs),
                "messages_per_s": [r["messages_per_s"] for r in runs],
                "cpu_us_per_message_median": statistics.median(r["cpu_us_per_message"] for r in runs),
                "cpu_share_median": statistics.median(r["cpu_share_while_publishing"] for r in runs),
                "process_cpu_us_per_message_median": statistics.median(r["process_cpu_us_per_message"] for r in runs),
                "mosquitto_us_per_message_median": statistics.median(r["mosquitto_us_per_message"] for r in runs),
                "prepare_s_median": statistics.median(r["prepare_s"] for r in runs),
            }
        )
    table = Table(
        "offered msgs/s", "publisher", "achieved msgs/s (runs)", "CPU µs/msg publishing", "share of a core",
        "CPU µs/msg whole process", "Mosquitto µs/msg", "prepare s",
        title=f"load generators, QoS 1, 1 reading per message, {DEVICES:,} devices (loopback, {os.cpu_count()} cores)",
    )  # fmt: skip
    for s in summary:
        table.add_row(
            str(s["offered"]),
            s["publisher"],
            " / ".join(f"{v:,}" for v in s["messages_per_s"]),
            f"{s['cpu_us_per_message_median']:.1f}",
            f"{s['cpu_share_median']:.2f}",
            f"{s['process_cpu_us_per_message_median']:.1f}",
            f"{s['mosquitto_us_per_message_median']:.1f}",
            f"{s['prepare_s_median']:.1f}",
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "load_average": os.getloadavg(),
                "config": {"devices": DEVICES, "seconds": args.seconds, "rounds": args.rounds, "qos": 1, "batch": 1},
                "summary": summary,
                "runs": rows,
            },
            indent=2,
        )
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
