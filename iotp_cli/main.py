"""``iotp``: one CLI with a subcommand per component and for the local stack.

Component commands import their packages lazily so that ``iotp --help`` stays fast.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dashboard_api.cli import api
from gateway.cli import gateway
from history.cli import sink
from iotp.settings import get_settings
from loadtest.cli import loadtest
from simulator.cli import simulate
from stream_jobs.cli import stream

app = typer.Typer(
    help="IoT telemetry pipeline: simulator -> MQTT -> gateway -> Kafka -> Faust -> Redis + ClickHouse -> dashboard.",
    no_args_is_help=True,
    add_completion=False,
)
stack_app = typer.Typer(help="The local backing services: Mosquitto, Redis, Kafka-wire broker.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()

app.command(help="Run the sensor fleet simulator (publishes readings over MQTT).")(simulate)
app.command(help="Run the MQTT -> Kafka gateway.")(gateway)
app.command(help="Run a Faust stream worker (windows, alerts, Redis state).")(stream)
app.command(help="Run the dashboard API (and, in embedded mode, the ClickHouse sink).")(api)
app.command(help="Run the Kafka -> ClickHouse sink on its own (ClickHouse server mode).")(sink)
app.command(help="Drive the running pipeline at a fixed rate or a ramp; measure every stage.")(loadtest)


def _stack():
    from infra.stack import LocalStack

    return LocalStack(get_settings())


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(1)


@stack_app.command("up", help="Install what is missing, start the services, wait, create topics.")
def stack_up() -> None:
    from infra.stack import StackError
    from infra.system_packages import InstallError

    try:
        _stack().up()
    except (StackError, InstallError, TimeoutError) as exc:
        _fail(exc)
    _print_status()


@stack_app.command("topics", help="Create the pipeline's Kafka topics (idempotent); for an existing cluster.")
def stack_topics() -> None:
    from infra.kafka_admin import create_topics_sync

    created = create_topics_sync(get_settings())
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@stack_app.command("down", help="Stop the services (and any pipeline process).")
def stack_down() -> None:
    _stack().down()
    console.print("stack stopped")


@stack_app.command("status", help="Show each service and whether it answers.")
def stack_status() -> None:
    _print_status()


def _print_status() -> None:
    rows = _stack().status()
    if not rows:
        console.print("stack is not running")
        return
    table = Table("program", "group", "state", "pid", "endpoint", "answers")
    for row in rows:
        answers = "" if row["answers"] is None else ("yes" if row["answers"] else "[red]no[/]")
        table.add_row(row["name"], row["group"], row["state"], str(row["pid"] or ""), row["endpoint"], answers)
    console.print(table)


@app.command(help="The main job: stack + gateway + stream worker + API + simulator, in the background.")
def up(
    devices: Annotated[int, typer.Option(help="Simulated devices")] = 30,
    rate: Annotated[float, typer.Option(help="Total readings per second")] = 30.0,
    anomaly_rate: Annotated[float, typer.Option(help="Anomalies per device-hour")] = 2.0,
    gateways: Annotated[int, typer.Option(min=1, help="Gateway processes (shared subscription)")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="Faust stream worker processes")] = 1,
) -> None:
    from infra.stack import StackError
    from infra.system_packages import InstallError

    stack = _stack()
    sim_args = ["--devices", str(devices), "--rate", str(rate), "--anomaly-rate", str(anomaly_rate), "--quiet"]
    try:
        stack.up(simulate_args=sim_args, gateways=gateways, workers=workers)
        stack.wait_api()
    except (StackError, InstallError, TimeoutError) as exc:
        _fail(exc)
    _print_status()
    settings = stack.settings
    console.print(f"\n[bold green]Dashboard:[/] {settings.api_url}/?token={settings.api_token}")
    console.print(f"API docs:  {settings.api_url}/docs   (token header: Authorization: Bearer {settings.api_token})")
    console.print(f"Logs:      iotp logs NAME   ({stack.supervisor.log_dir})")
    console.print("Stop:      make stop   (or: iotp down)")


@app.command(help="Stop the pipeline and the stack.")
def down() -> None:
    _stack().down()
    console.print("pipeline and stack stopped")


@app.command(help="Show every process of the local stack and pipeline.")
def status() -> None:
    _print_status()


@app.command(help="Print the effective settings and the environment variable that overrides each.")
def config() -> None:
    from iotp.settings import Settings

    settings = get_settings()
    table = Table("environment variable", "value", "description")
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "***" if name.endswith(("password", "token")) and value else str(value)
        table.add_row(f"IOTP_{name.upper()}", shown, field.description or "")
    console.print(table)


@app.command(help="Print (or follow) a process log: mosquitto, redis, kafka, gateway, stream, api, ...")
def logs(
    name: str,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    path = _stack().supervisor.log_dir / f"{name}.log"
    if not path.exists():
        _fail(FileNotFoundError(f"no log {path}"))
    cmd = ["tail", f"-n{lines}", *(["-F"] if follow else []), str(path)]
    raise typer.Exit(subprocess.call(cmd, stdout=sys.stdout))


if __name__ == "__main__":
    app()
