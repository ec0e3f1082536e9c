"""Generate a fleet's readings in process (no MQTT, no clock): for detector tests and scoring.

Stable API::

    from simulator.stream import generate_readings

    stream = generate_readings(scenario_or_fleet, start_ms=1763800000000, duration_s=3600, seed=7,
                               anomaly_rate=None, interval_s=None, truth_file=None)
    for reading in stream:        # dicts in the MQTT wire schema (iotp.schema.Reading), ts ascending
        ...
    stream.truth                  # list[dict]: the ground truth (see simulator.anomalies), complete once
                                  # the stream is exhausted (or after stream.close())
    stream.injector               # the simulator.anomalies.AnomalyInjector used

``scenario_or_fleet`` is a :class:`simulator.scenario.Scenario`, a scenario file path / shipped name
(``"standard"``), or a list of :class:`simulator.fleet.Device` (then ``interval_s`` defaults to 1 s and
``anomaly_rate`` to 0). Every device reads every ``interval_s`` (scenario: ``device_interval_s``), devices
staggered evenly inside the interval, exactly as the MQTT publisher paces them; sequence numbers start at
``start_ms + 1``. The same arguments give the same readings and the same truth. Readings suppressed by a
dropout are not yielded (but consume their sequence number, as a silent real device would not).
Out-of-range readings ARE yielded (the gateway would reject them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iotp.profiles import Profiles
from simulator.anomalies import AnomalyInjector
from simulator.fleet import Device
from simulator.scenario import Scenario, load_scenario


def emit(device: Device, ts_ms: int, injector: AnomalyInjector | None) -> dict | None:
    """The device's next reading at ``ts_ms`` with anomalies applied; None when it is silent (dropout)."""
    reading = device.reading_at(ts_ms)
    if injector is None:
        return reading
    metrics = injector.apply(device.device_id, device.device_type, ts_ms, reading["metrics"])
    if metrics is None:
        return None
    if metrics is not reading["metrics"]:
        reading["metrics"] = metrics
    return reading


class GeneratedStream(Iterator[dict]):
    def __init__(
        self, devices: list[Device], injector: AnomalyInjector, start_ms: int, duration_s: float, interval_s: float
    ) -> None:
        self.devices = devices
        self.injector = injector
        self.start_ms = start_ms
        self.end_ms = start_ms + int(duration_s * 1000)
        self.interval_ms = interval_s * 1000
        self._gen = self._generate()
        self._closed = False

    def _generate(self) -> Iterator[dict]:
        n = len(self.devices)
        tick = 0
        while True:
            base = self.start_ms + tick * self.interval_ms
            for i, device in enumerate(self.devices):
                ts = int(base + i * self.interval_ms / n)
                if ts >= self.end_ms:
                    self.close()
                    return
                reading = emit(device, ts, self.injector)
                if reading is not None:
                    yield reading
            tick += 1

    def __next__(self) -> dict:
        return next(self._gen)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.injector.close(self.end_ms - 1)

    @property
    def truth(self) -> list[dict[str, Any]]:
        return self.injector.truth


def generate_readings(
    scenario_or_fleet: Scenario | str | Path | list[Device],
    start_ms: int,
    duration_s: float,
    seed: int | None = None,
    *,
    anomaly_rate: float | None = None,
    interval_s: float | None = None,
    truth_file: str | Path | None = None,
    profiles: Profiles | None = None,
) -> GeneratedStream:
    if isinstance(scenario_or_fleet, list):
        devices = scenario_or_fleet
        scenario = Scenario().with_overrides(devices=len(devices), anomaly_rate=anomaly_rate or 0.0)
        interval = interval_s or 1.0
        schedule = []
    else:
        scenario = scenario_or_fleet if isinstance(scenario_or_fleet, Scenario) else load_scenario(scenario_or_fleet)
        scenario = scenario.with_overrides(anomaly_rate=anomaly_rate, seed=seed)
        devices = scenario.build_fleet(start_ms, profiles)
        interval = interval_s or scenario.device_interval_s
        schedule = scenario.resolved_schedule(devices)
    run_seed = seed if seed is not None else scenario.seed
    injector = AnomalyInjector(
        seed=run_seed,
        rate_per_device_hour=scenario.anomalies.rate_per_device_hour,
        kinds=scenario.anomalies.kinds,
        schedule=schedule,
        start_ms=start_ms,
        truth_file=truth_file,
        profiles=profiles,
    )
    return GeneratedStream(devices, injector, start_ms, duration_s, interval)
