"""``iotp``: one CLI with a subcommand per component and for the local stack.

Component commands import their packages lazily so that ``iotp --help`` stays fast.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

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

if TYPE_CHECKING:
    from infra.mqtt_auth import Credentials
    from infra.stack import LocalStack
    from iotp.settings import Settings

app = typer.Typer(
    help="IoT telemetry pipeline: simulator -> MQTT -> gateway -> Kafka -> Faust -> Redis + ClickHouse -> dashboard.",
    no_args_is_help=True,
    add_completion=False,
)
stack_app = typer.Typer(help="The local backing services: Mosquitto, Redis, Kafka-wire broker.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
devices_app = typer.Typer(
    help="MQTT credentials of real devices for the local stack (username = device id; see docs/security.md).",
    no_args_is_help=True,
)
app.add_typer(devices_app, name="devices")
console = Console()

app.command(help="Run the sensor fleet simulator (publishes readings over MQTT).")(simulate)
app.command(help="Run the MQTT -> Kafka gateway.")(gateway)
app.command(help="Run a Faust stream worker (windows, alerts, Redis state).")(stream)
app.command(help="Run the dashboard API (and, in embedded mode, the ClickHouse sink).")(api)
app.command(help="Run the Kafka -> ClickHouse sink on its own (ClickHouse server mode).")(sink)
app.command(help="Drive the running pipeline at a fixed rate or a ramp; measure every stage.")(loadtest)


def _stack() -> LocalStack:
    from infra.stack import LocalStack

    return LocalStack(get_settings())


def _fail(exc: Exception) -> NoReturn:
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


def _apply_device_change(
    stack: LocalStack, settings: Settings, creds: Credentials | None = None, timeout: float = 10.0
) -> None:
    """Reload a running broker, then wait until it answers for ``creds`` as expected (accepts new ones)."""
    import time

    from iotp.mqtt import broker_accepts

    if not stack.reload_mqtt_auth():
        console.print("(the stack is not running: the credentials apply from the next `iotp stack up`)")
        return
    if creds is None:
        return
    probe = settings.model_copy(update={"mqtt_username": creds.username, "mqtt_password": creds.password})
    deadline = time.monotonic() + timeout
    while not broker_accepts(probe, timeout=2.0):
        if time.monotonic() > deadline:
            _fail(TimeoutError(f"Mosquitto did not accept the new credentials within {timeout:.0f}s"))
        time.sleep(0.2)


@devices_app.command("add", help="Create a device's MQTT credentials (live, no restart); prints the password once.")
def devices_add(
    device_id: str,
    device_type: Annotated[str | None, typer.Option("--type", help="Device type (shown by `devices list`)")] = None,
) -> None:
    from infra.mqtt_auth import AuthError

    stack = _stack()
    try:
        creds = stack.mqtt_auth().add_device(device_id, device_type)
    except AuthError as exc:
        _fail(exc)
    _apply_device_change(stack, stack.settings, creds)
    settings = stack.settings
    topic = f"{settings.mqtt_topic_prefix}/{device_type or '<device_type>'}/{device_id}"
    console.print(f"device [bold]{device_id}[/] may publish to [bold]{topic}[/]")
    console.print(f"MQTT {settings.mqtt_host}:{settings.mqtt_port}  username: {creds.username}")
    # The one place a device password is shown: print it plainly (no markup), it is not stored anywhere.
    print(f"password: {creds.password}")
    console.print("(shown once; only its hash is kept. Lost it? `iotp devices remove` and add the device again)")


@devices_app.command("list", help="The devices that have MQTT credentials.")
def devices_list() -> None:
    from datetime import UTC, datetime

    table = Table("device id", "type", "created (UTC)")
    for device in _stack().mqtt_auth().devices():
        created = datetime.fromtimestamp(device.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(device.device_id, device.device_type or "", created)
    console.print(table)


@devices_app.command("remove", help="Delete a device's MQTT credentials (new connections are refused at once).")
def devices_remove(device_id: str) -> None:
    from infra.mqtt_auth import AuthError

    stack = _stack()
    try:
        stack.mqtt_auth().remove_device(device_id)
    except AuthError as exc:
        _fail(exc)
    _apply_device_change(stack, stack.settings)
    console.print(f"device {device_id} removed (a connection it still holds stays open until it reconnects)")


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
    from iotp.settings import Settings

    stack = _stack()
    sim_args = ["--devices", str(devices), "--rate", str(rate), "--anomaly-rate", str(anomaly_rate), "--quiet"]
    try:
        stack.up(simulate_args=sim_args, gateways=gateways, workers=workers)
        stack.wait_api()
    except (StackError, InstallError, TimeoutError) as exc:
        _fail(exc)
    _print_status()
    settings = stack.settings
    if settings.api_token == Settings.model_fields["api_token"].default:
        # The dev default only: the link logs the browser in (the token becomes an HttpOnly cookie and
        # leaves the address bar at once). A real token is never printed.
        console.print(f"\n[bold green]Dashboard:[/] {settings.api_url}/?token={settings.api_token}")
    else:
        console.print(f"\n[bold green]Dashboard:[/] {settings.api_url}/   (log in with your IOTP_API_TOKEN)")
    console.print(f"API docs:  {settings.api_url}/docs   (header: Authorization: Bearer <IOTP_API_TOKEN>)")
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
        shown = "***" if name.endswith(("password", "token", "tokens")) and value else str(value)
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
