"""Detector quality: score the stream job's detectors against the simulator's ground truth.

Run:  .venv/bin/python benchmarks/detector_quality.py [--hours 3] [--seed 42] [--scenario standard]

In process, deterministic, no Kafka: the simulator's ``generate_readings`` produces the standard
scenario's readings with injected anomalies and the ground truth; the readings go, one Kafka-record-like
batch per reading and in ``ts`` order, through the same :class:`stream_jobs.engine.Engine` the Faust
worker runs (dedup, windows, detectors), with a simulated wall clock that ticks every 0.5 s (window
closing, silence). Readings the gateway would reject (outside the metric's valid range) are dropped.

Scoring (per anomaly kind):

* An alert *matches* a ground-truth anomaly of the same device when the metric agrees (a device-level
  anomaly -- dropout -- matches only the device-level ``silence`` rule) and the alert was opened while the
  anomaly was active or within ``--slack`` seconds after it ended (e.g. the jump back when a drift ends).
* recall = detected anomalies / anomalies; delay = first matching alert's open time - anomaly start.
* precision = alerts matched to an anomaly of that kind / (those + unmatched alerts whose rule points to
  that kind: threshold, zscore, rate_of_change -> spike; drift -> drift; flatline -> flatline;
  silence -> dropout). An alert matching several anomalies counts for the one that started last.

Prints a table and writes ``benchmarks/results/detector_quality.json``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotp.profiles import shipped_profiles
from simulator.stream import generate_readings
from stream_jobs.detectors import load_rules
from stream_jobs.engine import Effects, Engine

RESULTS = Path(__file__).resolve().parent / "results" / "detector_quality.json"
START_MS = 1_763_800_000_000
TICK_MS = 500
RULE_KIND = {
    "threshold": "spike",
    "zscore": "spike",
    "rate_of_change": "spike",
    "drift": "drift",
    "flatline": "flatline",
    "silence": "dropout",
}
TARGET_KINDS = ("spike", "drift", "flatline", "dropout")


def valid(reading: dict) -> bool:
    profile = shipped_profiles().get(reading["device_type"])
    for name, value in reading["metrics"].items():
        spec = profile.metrics.get(name) if profile else None
        if spec is not None and not spec.valid_min <= value <= spec.valid_max:
            return False
    return True


def run(scenario: str, hours: float, seed: int | None, windows_s: list[int], grace_s: float) -> tuple:
    stream = generate_readings(scenario, start_ms=START_MS, duration_s=hours * 3600, seed=seed)
    engine = Engine(windows_s, grace_s, load_rules())
    opened: list[dict] = []  # open events with the simulated time they were emitted at
    clock = START_MS
    readings = rejected = 0

    def collect(fx: Effects, at: int) -> None:
        for alert in fx.alerts:
            if alert["state"] == "open":
                opened.append({**alert, "opened_at": at})

    for reading in stream:
        ts = reading["ts"]
        while clock + TICK_MS <= ts:
            clock += TICK_MS
            fx = Effects()
            engine.tick(clock, {0}, fx)
            collect(fx, clock)
        if not valid(reading):
            rejected += 1
            continue
        readings += 1
        raw = orjson.dumps(
            {
                "v": 1,
                "device_id": reading["device_id"],
                "device_type": reading["device_type"],
                "readings": [{"id": "", "seq": reading["seq"], "ts": ts, "rx": ts, "metrics": reading["metrics"]}],
            }
        )
        fx = Effects()
        engine.apply(0, readings, raw, ts, fx, ts)
        collect(fx, ts)
    return stream.truth, opened, readings, rejected


def score(truth: list[dict], alerts: list[dict], slack_ms: int, window_ms: int) -> dict:
    by_device: dict[str, list[dict]] = defaultdict(list)
    for a in truth:
        by_device[a["device_id"]].append(a)
    for items in by_device.values():
        items.sort(key=lambda a: a["start_ms"])
    detected: dict[int, int] = {}  # id(anomaly) -> first detection time
    tp = defaultdict(int)
    fp = defaultdict(int)
    fp_rules = defaultdict(int)
    for alert in alerts:
        items = by_device.get(alert["device_id"], [])
        starts = [a["start_ms"] for a in items]
        t = alert["opened_at"]
        match = None
        for a in reversed(items[: bisect.bisect_right(starts, t)]):
            device_level = a["metric"] is None
            if device_level != (alert["rule"] == "silence"):
                continue
            if not device_level and a["metric"] != alert["metric"]:
                continue
            if a["start_ms"] <= t <= a["end_ms"] + slack_ms:
                match = a
                break
        if match is None:
            fp[RULE_KIND[alert["rule"]]] += 1
            fp_rules[alert["rule"]] += 1
            continue
        tp[match["kind"]] += 1
        key = id(match)
        detected[key] = min(detected.get(key, t), t)
    kinds = sorted({a["kind"] for a in truth} | set(TARGET_KINDS))
    table = {}
    for kind in kinds:
        anomalies = [a for a in truth if a["kind"] == kind]
        delays = [(detected[id(a)] - a["start_ms"]) / 1000 for a in anomalies if id(a) in detected]
        n_alerts = tp[kind] + fp[kind]
        table[kind] = {
            "anomalies": len(anomalies),
            "detected": len(delays),
            "recall": round(len(delays) / len(anomalies), 3) if anomalies else None,
            "alerts_matched": tp[kind],
            "alerts_unmatched": fp[kind],
            "precision": round(tp[kind] / n_alerts, 3) if n_alerts else None,
            "median_delay_s": round(statistics.median(delays), 2) if delays else None,
            "median_delay_windows": round(statistics.median(delays) / (window_ms / 1000), 2) if delays else None,
        }
    return {"kinds": table, "false_alerts_by_rule": dict(fp_rules)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="standard")
    parser.add_argument("--hours", type=float, default=3.0, help="simulated hours")
    parser.add_argument("--seed", type=int, default=None, help="default: the scenario's seed")
    parser.add_argument("--slack", type=float, default=60.0, help="seconds after an anomaly still matched")
    parser.add_argument("--windows", default="10,60")
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    windows_s = [int(w) for w in args.windows.split(",")]
    started = time.perf_counter()
    truth, alerts, readings, rejected = run(args.scenario, args.hours, args.seed, windows_s, args.grace)
    elapsed = time.perf_counter() - started
    result = score(truth, alerts, int(args.slack * 1000), min(windows_s) * 1000)
    result.update(
        scenario=args.scenario,
        hours=args.hours,
        seed=args.seed,
        readings=readings,
        rejected_out_of_range=rejected,
        alerts=len(alerts),
        slack_s=args.slack,
        window_s=min(windows_s),
        runtime_s=round(elapsed, 1),
        readings_per_s_in_process=round(readings / elapsed),
    )
    print(
        f"{args.scenario}: {args.hours} h simulated, {readings} readings ({rejected} rejected as out of range), "
        f"{len(alerts)} alerts, {elapsed:.1f}s ({readings / elapsed:,.0f} readings/s in process)"
    )
    print(
        f"{'kind':<14}{'anomalies':>10}{'recall':>8}{'precision':>10}{'alerts ok/bad':>15}"
        f"{'median delay':>14}{'(windows)':>10}"
    )
    ok = True
    for kind, row in result["kinds"].items():

        def fmt(v, spec=".3f"):
            return "-" if v is None else format(v, spec)

        print(
            f"{kind:<14}{row['anomalies']:>10}{fmt(row['recall']):>8}{fmt(row['precision']):>10}"
            f"{row['alerts_matched']:>8}/{row['alerts_unmatched']:<6}{fmt(row['median_delay_s'], '.1f'):>13}s"
            f"{fmt(row['median_delay_windows'], '.2f'):>10}"
        )
        if kind in TARGET_KINDS:
            ok &= (
                (row["recall"] or 0) >= 0.9
                and (row["precision"] or 0) >= 0.9
                and (row["median_delay_windows"] if row["median_delay_windows"] is not None else 99) <= 2
            )
    print("unmatched alerts by rule:", result["false_alerts_by_rule"])
    print(
        "targets (precision, recall >= 0.9, median delay <= 2 windows of "
        f"{min(windows_s)} s for {', '.join(TARGET_KINDS)}):",
        "MET" if ok else "NOT MET",
    )
    result["targets_met"] = ok
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
