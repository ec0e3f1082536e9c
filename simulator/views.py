"""Rich renderings of the publisher's stats: the live line and the end summary."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from simulator.publisher import PublishStats


def _rate_cell(stats: PublishStats) -> str:
    text = f"{stats.achieved_rate:,.1f} / {stats.target_rate:,.1f}"
    return text if stats.keeping_up else f"[bold red]{text} BEHIND {stats.behind_s:.1f}s[/]"


def progress_table(stats: PublishStats | None) -> Text:
    """One compact status line (fits 80 columns), refreshed in place by rich Live."""
    if stats is None:
        return Text.from_markup("[dim]connecting...[/]")
    return Text.from_markup(
        f"[bold]{stats.elapsed:6.1f}s[/] sent {stats.readings:,} readings / {stats.messages:,} msgs  "
        f"rate {_rate_cell(stats)}  err {stats.errors}  reconn {stats.reconnects}  "
        f"malformed {stats.malformed}  dropout {stats.suppressed}  anomalies {stats.anomalies}"
    )


def summary_table(stats: PublishStats) -> Table:
    table = Table("summary", "value", title="done", title_justify="left")
    rows = [
        ("elapsed", f"{stats.elapsed:.2f}s"),
        ("target rate", f"{stats.target_rate:,.1f} readings/s"),
        (
            "achieved rate",
            f"{stats.achieved_rate:,.1f} readings/s "
            f"({100 * stats.achieved_rate / stats.target_rate if stats.target_rate else 0:.1f}%)",
        ),
        ("keeping up", "yes" if stats.keeping_up else f"[bold red]no, {stats.behind_s:.1f}s behind[/]"),
        ("readings generated", f"{stats.readings:,}"),
        ("readings published", f"{stats.published:,}"),
        (
            "readings acknowledged by the broker",
            f"{stats.confirmed:,}"
            + (
                f"  [bold red]({stats.unconfirmed_messages:,} messages never acknowledged)[/]"
                if stats.unconfirmed_messages
                else ""
            ),
        ),
        ("messages", f"{stats.messages:,}"),
        ("malformed messages", f"{stats.malformed:,}"),
        ("suppressed (dropout)", f"{stats.suppressed:,}"),
        ("anomalies (ground truth)", f"{stats.anomalies:,}"),
        ("errors", str(stats.errors)),
        ("reconnects", str(stats.reconnects)),
        ("workers", f"{stats.workers} {stats.worker_rates or ''}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
