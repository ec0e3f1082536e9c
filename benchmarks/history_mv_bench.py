"""What the rollups cost the sink: embedded ClickHouse insert CPU per raw row, with both materialized views
(1 min and 1 h rollups, the schema as migrated), with the 1 h view fed from the 1 min rollup's rows instead
of the raw rows (a candidate), with the 1 min view only, and with none.

Run:  .venv/bin/python benchmarks/history_mv_bench.py [--devices 5000] [--rounds 4] [--blocks 3]

Each variant is its own database in one embedded chDB (a temporary directory), migrated by
``history.migrations.migrate`` and then stripped of the views it goes without. A block is what the sink
writes at 1 reading per device per second with its 2 s batches: ``devices`` power meters x 2 readings x 5
metrics, as Arrow, with the sink's insert settings (dedup token, dedup in dependent views). Variants
alternate within each round. Measured: this process's CPU time (``getrusage``: the engine's threads
included) per raw row over each insert, and over 4 s after the last insert of a variant (background
merges). Prints a table and writes ``benchmarks/results/history_mv_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("voltage", "current", "power_kw", "power_factor", "frequency")
# the candidate: the 1 h rollup from the rows the 1 min view writes (its states merged), not from the raw rows
CASCADED_1H = """
    CREATE MATERIALIZED VIEW {db}.rollup_1h_mv TO {db}.rollup_1h AS
    SELECT device_id, device_type, metric, toStartOfHour(bucket) AS bucket,
           countMergeState(n) AS n, minMergeState(vmin) AS vmin, maxMergeState(vmax) AS vmax,
           avgMergeState(vavg) AS vavg, varPopMergeState(vvar) AS vvar,
           quantilesTDigestMergeState(0.5, 0.95, 0.99)(q) AS q
    FROM {db}.rollup_1m
    GROUP BY device_id, metric, bucket, device_type
"""
# variant -> (views dropped from the migrated schema, statements run after that)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "both views": ((), ()),
    "1 h view fed from the 1 min rollup": (("rollup_1h_mv",), (CASCADED_1H,)),
    "1 min view only": (("rollup_1h_mv",), ()),
    "no views": (("rollup_1h_mv", "rollup_1m_mv"), ()),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def block_rows(devices: int, t0: int, rng: random.Random, seconds: int = 2) -> list[tuple]:
    """Rows of ``readings`` (the sink's tuple layout) for ``seconds`` of 1 reading per device per second."""
    rows = []
    for sec in range(seconds):
        for i in range(devices):
            ts = t0 + sec * 1000 + i * 1000 // devices
            for metric in METRICS:
                rows.append((f"bench-pm-{i:05d}", "power", metric, ts, rng.random() * 100, t0 // 1000 + sec, ts + 50))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=3, help="inserts per variant per round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "history_mv_bench.json")
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="iotp-mvbench-")
    os.environ["IOTP_STATE_DIR"] = state
    from history.client import get_client
    from history.columns import readings_arrow
    from history.migrations import migrate
    from iotp.settings import Settings

    settings = Settings()
    client = get_client(settings)
    databases = {}
    for n, (variant, (dropped, extra)) in enumerate(VARIANTS.items()):
        db = f"mvbench{n}"
        migrate(client, db, settings)
        for view in dropped:
            client.command(f"DROP VIEW {db}.{view}")
        for statement in extra:
            client.command(statement.format(db=db))
        databases[variant] = db
    rng = random.Random(7)
    t = int(time.time() * 1000) - 3_600_000
    token = 0
    per_row: dict[str, list[float]] = {v: [] for v in VARIANTS}
    background: dict[str, list[float]] = {v: [] for v in VARIANTS}
    console = Console()
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
        for variant in order:
            for _ in range(args.blocks):
                rows = block_rows(args.devices, t, rng)
                t += 2000
                token += 1
                table = readings_arrow(rows)
                before = _cpu()
                client.insert_arrow(
                    f"{databases[variant]}.readings",
                    table,
                    settings={
                        "insert_deduplicate": 1,
                        "insert_deduplication_token": f"mvbench:{token}",
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                    },
                )
                per_row[variant].append((_cpu() - before) / len(rows) * 1e6)
            before = _cpu()
            time.sleep(4)
            background[variant].append(_cpu() - before)
        console.print(f"round {r + 1}/{args.rounds} done")
    rows_per_block = args.devices * 2 * len(METRICS)
    summary = [
        {
            "variant": v,
            "insert_cpu_us_per_row_median": round(statistics.median(per_row[v]), 2),
            "insert_cpu_us_per_row": [round(x, 2) for x in per_row[v]],
            "background_cpu_s_per_4s_median": round(statistics.median(background[v]), 2),
        }
        for v in VARIANTS
    ]
    out = Table(
        "variant",
        "insert CPU µs per raw row (median)",
        "min-max",
        "CPU s in the 4 s after",
        title=f"embedded ClickHouse, blocks of {rows_per_block:,} rows ({args.devices:,} power meters x 2 s)",
    )
    for s in summary:
        values = s["insert_cpu_us_per_row"]
        out.add_row(
            s["variant"],
            f"{s['insert_cpu_us_per_row_median']:.2f}",
            f"{min(values):.2f}-{max(values):.2f}",
            f"{s['background_cpu_s_per_4s_median']:.2f}",
        )
    console.print(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "load_average": os.getloadavg(),
                "config": {"devices": args.devices, "rounds": args.rounds, "blocks": args.blocks},
                "summary": summary,
            },
            indent=2,
        )
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
