"""``iotp loadtest``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Publisher(StrEnum):
    lean = "lean"
    simulator = "simulator"


def loadtest(
    rate: Annotated[float | None, typer.Option(help="One fixed rate (readings/s)")] = None,
    ramp: Annotated[str, typer.Option(help="Stepped ramp, readings/s, comma separated")] = "1000,2000,5000,10000,"
    "15000,20000",
    step_seconds: Annotated[float, typer.Option(help="Publishing time per step")] = 20.0,
    drain_seconds: Annotated[float, typer.Option(help="Max wait for the backlog after a step")] = 30.0,
    devices: Annotated[int, typer.Option(help="Devices (power meters: 5 metrics per reading)")] = 200,
    workers: Annotated[int | None, typer.Option(help="Publisher processes (default: 1 lean, 2 simulator)")] = None,
    publisher: Annotated[
        Publisher,
        typer.Option(
            help="lean: the fleet's readings over hand-framed MQTT 3.1.1 (about a tenth of the simulator's CPU "
            "per message, so the test measures the pipeline); simulator: the real simulator (paho, MQTT 5)",
        ),
    ] = Publisher.lean,
    prepare: Annotated[
        bool,
        typer.Option(
            help="lean publisher: build each step's frames before it starts, so publishing costs a copy and a "
            "timestamp (--no-prepare: make every reading while publishing)",
        ),
    ] = True,
    batch: Annotated[int, typer.Option(help="Readings per MQTT message")] = 1,
    qos: Annotated[int, typer.Option(min=0, max=1)] = 1,
    reference: Annotated[bool, typer.Option(help="Measure the raw broker and Kafka limits too")] = True,
    out: Annotated[Path, typer.Option(help="Output prefix: writes .json and .png")] = Path(
        "benchmarks/results/loadtest"
    ),
    pause_simulator: Annotated[bool, typer.Option(help="Stop the background simulator while testing")] = True,
) -> None:
    import platform

    import psutil
    from rich.console import Console

    from infra.stack import LocalStack
    from iotp.settings import get_settings
    from loadtest import reference as ref
    from loadtest.report import plot, print_table, process_table
    from loadtest.runner import LoadTest, max_sustainable, to_json

    console = Console(width=max(Console().width, 170))  # the tables are wide; keep them readable in logs
    from infra.mqtt_auth import with_local_credentials

    # the local stack's simulator account: the load generator (and the broker reference) publish with it
    settings = with_local_credentials(get_settings(), "simulator")
    stack = LocalStack(settings)
    rows = stack.status()
    pids = {row["name"]: row["pid"] for row in rows if row["pid"]}
    if not any(name.startswith("gateway") for name in pids) or "api" not in pids:
        console.print("[red]the pipeline is not running:[/] start it with `make run` (or `iotp up`) first")
        raise typer.Exit(1)
    if pause_simulator and "simulator" in pids:
        stack.supervisor.stop("simulator")
        pids.pop("simulator")
    workers = workers or (1 if publisher is Publisher.lean else 2)
    rates = [rate] if rate else [float(x) for x in ramp.split(",") if x.strip()]
    test = LoadTest(
        settings,
        devices=devices,
        workers=workers,
        publisher=publisher.value,
        prepare=prepare,
        batch=batch,
        qos=qos,
        step_s=step_seconds,
        drain_s=drain_seconds,
        pids=pids,
    )
    test.log = console.print
    references = {}
    try:
        if reference:
            console.print("reference: Mosquitto C clients (QoS 0) and a bare aiokafka producer …")
            references["mqtt_c_clients"] = ref.mqtt_c_clients(settings)
            references["kafka_bare_producer"] = ref.kafka_bare_producer(settings)
            console.print(references)
        results = test.run(rates)
    finally:
        if pause_simulator and "simulator" in {row["name"] for row in rows}:
            stack.supervisor.start("simulator")
    print_table(console, results)
    process_table(console, results)
    best = max_sustainable(results)
    console.print(
        f"maximum sustainable rate: [bold]{best or 'none'}[/] readings/s ({devices} devices, batch {batch}, QoS {qos})"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    config = {
        "devices": devices,
        "workers": workers,
        "publisher": publisher.value,
        "prepared_frames": prepare and publisher is Publisher.lean,
        "batch": batch,
        "qos": qos,
        "step_s": step_seconds,
        "processes": sorted(pids),
        "gateways": sum(n.startswith("gateway") for n in pids),
        "stream_workers": sum(n.startswith("stream") for n in pids),
    }
    out.with_suffix(".json").write_bytes(
        to_json(results, {"machine": machine, "config": config, "reference": references})
    )
    plot(
        results,
        out.with_suffix(".png"),
        f"iotp load test — {config['gateways']} gateway(s), "
        f"{config['stream_workers']} stream worker(s), {devices} devices",
    )
    console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
