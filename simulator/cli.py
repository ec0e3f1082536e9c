"""``iotp simulate``."""

from __future__ import annotations

from typing import Annotated

import typer


def simulate(
    devices: Annotated[int, typer.Option(help="Number of simulated devices")] = 30,
    rate: Annotated[float, typer.Option(help="Total messages per second")] = 30.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages")] = None,
    seed: Annotated[int | None, typer.Option(help="Deterministic fleet and signals")] = None,
    qos: Annotated[int, typer.Option(min=0, max=1, help="MQTT QoS")] = 0,
    anomaly_rate: Annotated[float, typer.Option(help="Injected anomalies per device-hour")] = 0.0,
    quiet: Annotated[bool, typer.Option(help="No live progress")] = False,
) -> None:
    from rich.console import Console

    from iotp.settings import get_settings
    from simulator.fleet import build_fleet
    from simulator.publisher import run_publisher

    console = Console()
    fleet = build_fleet(devices, seed=seed)

    def tick(stats):
        if not quiet:
            console.print(f"sent={stats.sent} rate={stats.achieved_rate:.1f}/s target={rate:.1f}/s "
                          f"errors={stats.errors}")

    stats = run_publisher(get_settings(), fleet, rate, qos=qos, duration=duration, count=count,
                          on_tick=tick)
    console.print(f"done: sent={stats.sent} in {stats.elapsed:.1f}s "
                  f"({stats.achieved_rate:.1f}/s, target {rate:.1f}/s), errors={stats.errors}")
