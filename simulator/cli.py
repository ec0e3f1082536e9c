"""``iotp simulate``: a scenario file plus CLI flags (flags win)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _parse_mix(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        mix[name.strip()] = float(weight or 1)
    return mix


def simulate(
    scenario: Annotated[str | None, typer.Option(help="Scenario YAML file, or a shipped name: standard")] = None,
    devices: Annotated[int | None, typer.Option(help="Number of simulated devices")] = None,
    mix: Annotated[str | None, typer.Option(help="Type mix, e.g. climate=0.5,vibration=0.3,power=0.2")] = None,
    rate: Annotated[float | None, typer.Option(help="Total readings per second (fleet)")] = None,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between readings of one device (used when --rate is not given)")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many readings")] = None,
    seed: Annotated[int | None, typer.Option(help="Deterministic fleet, signals and anomalies")] = None,
    qos: Annotated[int | None, typer.Option(min=0, max=1, help="MQTT QoS")] = None,
    batch: Annotated[int | None, typer.Option(min=1, max=1000, help="Readings per MQTT message")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Publisher processes (the fleet is split)")] = 1,
    anomaly_rate: Annotated[float | None, typer.Option(help="Random anomalies per device-hour")] = None,
    truth_file: Annotated[Path | None, typer.Option(help="Write the anomaly ground truth (JSON Lines)")] = None,
    malformed_fraction: Annotated[float | None, typer.Option(min=0, max=1, help="Fraction of broken payloads")] = None,
    reboot_every: Annotated[
        int | None, typer.Option(min=0, help="Every device reboots after this many readings: seq restarts at 1")
    ] = None,
    no_seq_fraction: Annotated[
        float | None, typer.Option(min=0, max=1, help="Fraction of the devices that send no seq at all")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id (-w<N> appended per worker)")] = None,
    persistent: Annotated[
        bool, typer.Option("--persistent/--clean", help="Persistent MQTT session (needs a stable --client-id)")
    ] = False,
    session_expiry: Annotated[int, typer.Option(help="Session expiry (s) of a persistent session")] = 3600,
    username: Annotated[str | None, typer.Option(help="MQTT username (else IOTP_MQTT_USERNAME)")] = None,
    password: Annotated[str | None, typer.Option(help="MQTT password (else IOTP_MQTT_PASSWORD)")] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="MQTT over TLS")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for TLS")] = None,
    stats_json: Annotated[Path | None, typer.Option(help="Write the end summary as JSON here")] = None,
    quiet: Annotated[bool, typer.Option(help="No live progress")] = False,
) -> None:
    import signal
    import threading

    import orjson
    from rich.console import Console
    from rich.live import Live

    from iotp import gc_tuning
    from iotp.settings import get_settings
    from simulator.publisher import PublishOptions, run_scenario
    from simulator.scenario import load_scenario
    from simulator.views import progress_table, summary_table

    console = Console(stderr=False)
    try:
        sc = load_scenario(scenario).with_overrides(
            devices=devices,
            mix=_parse_mix(mix),
            rate_per_s=rate,
            interval_s=interval,
            duration_s=duration,
            count=count,
            seed=seed,
            qos=qos,
            batch=batch,
            anomaly_rate=anomaly_rate,
            malformed_fraction=malformed_fraction,
            reboot_every=reboot_every,
            no_seq_fraction=no_seq_fraction,
        )
        if interval is not None and rate is None:
            sc = sc.model_copy(update={"rate_per_s": None})
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    from infra.mqtt_auth import with_local_credentials

    settings = get_settings()
    updates = {
        k: v
        for k, v in dict(mqtt_username=username, mqtt_password=password, mqtt_tls=tls, mqtt_ca_file=ca_file).items()
        if v is not None
    }
    if updates:
        settings = settings.model_copy(update=updates)
    # by hand against the local stack: its simulator account (under supervisord it comes in IOTP_MQTT_*)
    settings = with_local_credentials(settings, "simulator")
    gc_tuning.tune(settings)
    # the live device profiles (Redis), or the shipped + IOTP_PROFILES_FILE ones if Redis does not answer
    from iotp.profile_store import current_profiles

    try:
        profiles = current_profiles(settings)
    except ValueError as exc:  # a bad IOTP_PROFILES_FILE
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    missing = sorted(t for t, w in sc.fleet.mix.items() if w > 0 and t not in profiles)
    if missing:
        console.print(f"[bold red]error:[/] no device profile for {missing}; known: {', '.join(sorted(profiles))}")
        raise typer.Exit(2)
    if persistent and not client_id:
        client_id = f"iotp-sim-{sc.name}"
    options = PublishOptions(
        qos=sc.qos,
        batch=sc.batch,
        malformed_fraction=sc.malformed_fraction,
        truth_file=str(truth_file) if truth_file else None,
        client_id=client_id,
        persistent=persistent,
        session_expiry_s=session_expiry,
    )
    stop = threading.Event()
    if workers > 1:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    else:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    if not quiet:
        console.print(
            f"[bold]simulate[/] {sc.name}: {sc.fleet.devices} devices, target {sc.total_rate:g} "
            f"readings/s (every {sc.device_interval_s:g}s per device), batch {sc.batch}, "
            f"QoS {sc.qos}, {workers} worker(s) -> {settings.mqtt_host}:{settings.mqtt_port}"
        )
    try:
        if quiet:
            stats = run_scenario(settings, sc, options, workers, stop=stop, profiles=profiles)
        else:
            with Live(progress_table(None), console=console, auto_refresh=False, transient=False) as live:
                stats = run_scenario(
                    settings,
                    sc,
                    options,
                    workers,
                    on_tick=lambda s: live.update(progress_table(s), refresh=True),
                    stop=stop,
                    profiles=profiles,
                )
                live.update(progress_table(stats), refresh=True)
    except (ConnectionError, RuntimeError, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(summary_table(stats))
    if stats_json:
        stats_json.write_bytes(orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2))
    if not stats.keeping_up:
        console.print(
            f"[bold yellow]warning:[/] could not keep up: achieved {stats.achieved_rate:.1f} of "
            f"{stats.target_rate:.1f} readings/s (schedule {stats.behind_s:.1f}s behind). Use "
            "--workers, --batch, or a lower --rate."
        )
