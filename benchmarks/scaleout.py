"""Scale-out: the whole pipeline with 1+1, 2+2 and 4+4 gateway + stream-worker processes, one run.

Run:  .venv/bin/python benchmarks/scaleout.py [--topologies 1x1,2x2,4x4] [--ramp 5000,8000,10000,12000]
      [--devices 5000] [--record-mode partition] [--step-seconds 20]

For each topology it starts a fresh local stack and pipeline in a state directory of its own
(``iotp up --gateways N --workers N`` with ``IOTP_STATE_DIR`` set; the default ports, so no other stack
may be running), runs ``iotp loadtest`` over the ramp (lean publisher, QoS 1, 1 reading per message), and
stops it again (``iotp down``). Each load test writes its own JSON and PNG
(``benchmarks/results/scaleout-<NxN>.json``); this script then prints one table of every step of every
topology -- stage rates, sensor -> Redis latency, loss, and CPU per process over the publishing window
(publisher included) -- and writes ``benchmarks/results/scaleout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
IOTP = [sys.executable, "-m", "iotp_cli"]
console = Console(width=200)


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([*IOTP, *args], cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)


def run_topology(n: int, args: argparse.Namespace, out_dir: Path) -> dict:
    state = Path(tempfile.mkdtemp(prefix=f"iotp-scaleout-{n}x{n}-"))
    env = {**os.environ, "IOTP_STATE_DIR": str(state), "IOTP_KAFKA_RECORD_MODE": args.record_mode}
    out = out_dir / f"scaleout-{n}x{n}"
    try:
        up = _run(["up", "--gateways", str(n), "--workers", str(n)], env, 300)
        if up.returncode != 0:
            raise RuntimeError(f"iotp up failed:\n{up.stdout}\n{up.stderr}")
        time.sleep(args.settle_seconds)  # consumer groups of N workers settle before the first step
        test = _run(
            [
                "loadtest", "--ramp", args.ramp, "--devices", str(args.devices), "--step-seconds",
                str(args.step_seconds), "--no-reference", "--out", str(out),
                *([] if args.prepare else ["--no-prepare"]),
            ],
            env,
            1800,
        )  # fmt: skip
        console.print(test.stdout[-6000:])
        if test.returncode != 0:
            raise RuntimeError(f"iotp loadtest failed:\n{test.stdout[-3000:]}\n{test.stderr[-3000:]}")
    finally:
        _run(["down"], env, 120)
        shutil.rmtree(state, ignore_errors=True)
    data = json.loads(out.with_suffix(".json").read_text())
    data["topology"] = f"{n}+{n}"
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topologies", default="1x1,2x2,4x4", help="gateways x stream workers, comma separated")
    parser.add_argument("--ramp", default="5000,8000,10000,12000", help="readings/s per step")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--settle-seconds", type=float, default=10.0)
    parser.add_argument("--record-mode", default="partition", choices=["device", "partition"])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--no-prepare", dest="prepare", action="store_false", help="the lean publisher makes its readings live"
    )
    args = parser.parse_args()
    status = _run(["status"], dict(os.environ), 60)
    if "RUNNING" in status.stdout:
        console.print("[red]a local stack is running: stop it first (iotp down); this benchmark uses the default ports")
        raise SystemExit(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = [run_topology(int(t.split("x")[0]), args, args.out_dir) for t in args.topologies.split(",")]

    table = Table(
        "topology", "offered/s", "MQTT in/s", "processed/s", "stored/s", "Redis p50/p99 ms",
        "p99 to gateway / after ms", "lost", "backlog s", "drain s",
        "ok", "CPU % per process over the publishing window (one core = 100)",
        title=f"scale-out, {args.devices:,} devices, 1 reading per message, QoS 1, {args.record_mode} records",
    )  # fmt: skip
    for run in runs:
        for step in run["steps"]:
            rates = step["stage_rates"]
            lat = step.get("redis_latency_ms") or {}
            split = step.get("redis_latency_split_ms") or {}
            cpu = ", ".join(f"{name} {usage['cpu_pct']:.0f}" for name, usage in sorted(step["processes"].items()))
            cpu += f"; load test {step.get('harness_cpu_pct', 0):.0f}"
            table.add_row(
                run["topology"],
                f"{step['offered']:,.0f}",
                f"{rates.get('mqtt_in', 0):,.0f}",
                f"{rates.get('processed', 0):,.0f}",
                f"{rates.get('stored', 0):,.0f}",
                f"{lat.get('p50', 0):,.0f} / {lat.get('p99', 0):,.0f}",
                " / ".join(f"{split.get(part, {}).get('p99', 0):,.0f}" for part in ("to_gateway", "after_gateway")),
                str(step["lost"]),
                f"{step.get('backlog_s', 0):.1f}",
                f"{step['drain_s']:.1f}",
                "yes" if step["sustainable"] else "no",
                cpu,
            )
    console.print(table)
    (args.out_dir / "scaleout.json").write_text(json.dumps({"config": vars(args) | {"out_dir": str(args.out_dir)},
                                                            "runs": runs}, indent=2, default=str))  # fmt: skip
    console.print(f"wrote {args.out_dir / 'scaleout.json'}")


if __name__ == "__main__":
    main()
