"""Print the load-test table, and draw throughput and latency against the offered rate."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtest.runner import StepResult


def print_table(console: Console, results: list[StepResult]) -> None:
    table = Table(
        "offered/s",
        "published/s",
        "MQTT in",
        "Kafka in",
        "processed",
        "Redis",
        "stored",
        "Redis p50/p99 ms",
        "CH p50/p99 ms",
        "not stored",
        "dup rows",
        "backlog s",
        "drain s",
        "ok",
        title="load test",
    )
    for r in results:
        rates = r.stage_rates

        def lat(d: dict) -> str:
            return f"{d.get('p50', '-')}/{d.get('p99', '-')}" if d else "-"

        table.add_row(
            f"{r.offered:,.0f}",
            f"{r.publish_rate:,.0f}",
            f"{rates.get('mqtt_in', 0):,.0f}",
            f"{rates.get('kafka_in', 0):,.0f}",
            f"{rates.get('processed', 0):,.0f}",
            f"{rates.get('redis_visible', 0):,.0f}",
            f"{rates.get('stored', 0):,.0f}",
            lat(r.redis_latency_ms),
            lat(r.clickhouse_latency_ms),
            # not drained: still queued when the drain time ran out (a later step's check would find them)
            str(r.lost) if r.drained or not r.lost else f"{r.lost:,} (not drained)",
            str(r.duplicates),
            f"{r.backlog_s:.1f}",
            f"{r.drain_s:.1f}",
            "[green]yes[/]" if r.sustainable else "[red]no[/]",
        )
    console.print(table)


def process_table(console: Console, results: list[StepResult]) -> None:
    """One row per process (the publisher's own processes included), CPU averaged over each step's publishing
    window only (not its drain), RSS the peak inside it; then the CPU of all of them together, and the load
    test's own process (not in "all": it is the measuring harness, not the pipeline)."""
    names = sorted({n for r in results for n in r.processes})
    table = Table(
        "process",
        *[f"{r.offered:,.0f}/s ({r.cpu_window_s:.0f}s)" for r in results],
        title="CPU % (one core = 100) / peak RSS MB, over each step's publishing window",
    )
    for name in names:
        cells = []
        for r in results:
            p = r.processes.get(name)
            cells.append(f"{p['cpu_pct']:.0f} / {p['rss_mb']:.0f}" if p else "-")
        table.add_row(name, *cells)
    table.add_row("[bold]all[/]", *[f"{total_cpu(r):.0f}" for r in results])
    table.add_row("[dim]load test (harness)[/]", *[f"{r.harness_cpu_pct:.0f}" for r in results])
    console.print(table)


def total_cpu(result: StepResult) -> float:
    return sum(p["cpu_pct"] for p in result.processes.values())


def plot(results: list[StepResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [r.offered for r in results]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.5))
    ax1.plot(offered, offered, "k--", linewidth=1, label="offered")
    for stage, label in [
        ("mqtt_in", "MQTT in"),
        ("kafka_in", "Kafka in"),
        ("processed", "stream processed"),
        ("redis_visible", "visible in Redis"),
        ("stored", "stored in ClickHouse"),
    ]:
        ax1.plot(offered, [r.stage_rates.get(stage, 0) for r in results], marker="o", label=label)
    ax1.set_xlabel("offered readings/s")
    ax1.set_ylabel("achieved readings/s")
    ax1.set_title("throughput per stage")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for key, label in [("redis_latency_ms", "sensor → Redis"), ("clickhouse_latency_ms", "sensor → ClickHouse")]:
        for q, style in (("p50", "-"), ("p99", "--")):
            values = [getattr(r, key).get(q) for r in results]
            if any(v is not None for v in values):
                ax2.plot(
                    offered,
                    [v if v is not None else float("nan") for v in values],
                    style,
                    marker="o",
                    label=f"{label} {q}",
                )
    ax2.set_yscale("log")
    ax2.set_xlabel("offered readings/s")
    ax2.set_ylabel("latency ms (log)")
    ax2.set_title("end-to-end latency")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    for r in results:  # when in the step the slow readings were sensed (periodic work shows as spikes)
        points = [(b["s"], b["p99"]) for b in r.redis_latency_timeline if 0 <= b["s"] <= r.step_s]
        if points:
            ax3.plot([t for t, _ in points], [v for _, v in points], label=f"{r.offered:,.0f}/s")
    ax3.set_yscale("log")
    ax3.set_xlabel("sensor time in the step, s")
    ax3.set_ylabel("sensor → Redis p99 per second, ms (log)")
    ax3.set_title("latency over the step")
    if any(r.redis_latency_timeline for r in results):
        ax3.legend(fontsize=8)
    ax3.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
