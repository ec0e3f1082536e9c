"""Scenario files (YAML): fleet, rate, run length, MQTT options and anomalies in one place.

Example (the shipped ``simulator/scenarios/standard.yaml``)::

    name: standard
    seed: 42
    fleet: {devices: 30, mix: {climate: 0.4, vibration: 0.3, power: 0.3}, id_prefix: ""}
    rate_per_s: 30          # total readings per second over the fleet ...
    interval_s: null        # ... or the interval of each device (used when rate_per_s is null)
    duration_s: null        # stop after this many seconds, and/or
    count: null             # after this many readings
    qos: 0
    batch: 1                # readings per MQTT message (a JSON array of one device's readings)
    malformed_fraction: 0.0
    anomalies:
      rate_per_device_hour: 2.0
      kinds: {spike: 1, drift: 1, flatline: 1, dropout: 1, noise: 1, out_of_range: 0.5}
      schedule:
        - {device: 0, kind: spike, metric: null, at_s: 60, duration_s: 0}

CLI flags override the file. ``schedule[].device`` is a device id or an index into the fleet.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from iotp.profiles import Profiles
from simulator.anomalies import KINDS, ScheduledAnomaly
from simulator.fleet import DEFAULT_MIX, Device, build_fleet


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: int = Field(30, ge=1)
    mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    id_prefix: str = ""
    reboot_every: int = Field(0, ge=0, description="readings between reboots (seq restarts at 1); 0 = never")
    no_seq_fraction: float = Field(0.0, ge=0, le=1, description="share of the devices that send no seq")


class ScheduleItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | int
    kind: str
    at_s: float = Field(ge=0)
    duration_s: float = Field(0.0, ge=0)
    metric: str | None = None
    params: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kind(self) -> ScheduleItem:
        if self.kind not in KINDS:
            raise ValueError(f"unknown anomaly kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        return self


class AnomalySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_per_device_hour: float = Field(0.0, ge=0)
    kinds: dict[str, float] | None = None
    schedule: list[ScheduleItem] = Field(default_factory=list)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    seed: int | None = None
    fleet: FleetSpec = Field(default_factory=FleetSpec)
    rate_per_s: float | None = Field(None, gt=0)
    interval_s: float | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0)
    count: int | None = Field(None, ge=1)
    qos: int = Field(0, ge=0, le=1)
    batch: int = Field(1, ge=1, le=1000)
    malformed_fraction: float = Field(0.0, ge=0, le=1)
    anomalies: AnomalySpec = Field(default_factory=AnomalySpec)

    @property
    def total_rate(self) -> float:
        """Readings per second over the whole fleet (``rate_per_s``, else devices / ``interval_s``,
        else one reading per device per second)."""
        if self.rate_per_s is not None:
            return self.rate_per_s
        return self.fleet.devices / (self.interval_s or 1.0)

    @property
    def device_interval_s(self) -> float:
        return self.fleet.devices / self.total_rate

    def build_fleet(self, seq0: int | None = None, profiles: Profiles | None = None) -> list[Device]:
        """The scenario's fleet (:func:`simulator.fleet.build_fleet` with its size, mix, prefix and options)."""
        return build_fleet(
            self.fleet.devices,
            seed=self.seed,
            mix=self.fleet.mix,
            prefix=self.fleet.id_prefix,
            seq0=seq0,
            profiles=profiles,
            reboot_every=self.fleet.reboot_every,
            no_seq_fraction=self.fleet.no_seq_fraction,
        )

    def resolved_schedule(self, devices: list[Device]) -> list[ScheduledAnomaly]:
        """The schedule with device indexes turned into ids of ``devices``."""
        out = []
        for item in self.anomalies.schedule:
            device = item.device
            if isinstance(device, int):
                if not 0 <= device < len(devices):
                    raise ValueError(f"schedule device index {device} outside the fleet of {len(devices)}")
                device = devices[device].device_id
            out.append(ScheduledAnomaly(device, item.kind, item.at_s, item.duration_s, item.metric, dict(item.params)))
        return out

    def with_overrides(self, **values: Any) -> Scenario:
        """A copy with the given non-None values set; ``devices``/``mix``/``id_prefix`` go to the fleet,
        ``anomaly_rate`` to the anomalies."""
        data = self.model_dump()
        for key, value in values.items():
            if value is None:
                continue
            if key in ("devices", "mix", "id_prefix", "reboot_every", "no_seq_fraction"):
                data["fleet"][key] = value
            elif key == "anomaly_rate":
                data["anomalies"]["rate_per_device_hour"] = value
            else:
                data[key] = value
        return Scenario.model_validate(data)


def load_scenario(source: str | Path | None) -> Scenario:
    """A scenario from a YAML file path, or a shipped scenario by name (``standard``); None = defaults."""
    if source is None:
        return Scenario()
    path = Path(source)
    if not path.exists():
        shipped = resources.files("simulator") / "scenarios" / f"{source}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"no scenario file {source!r} (and no shipped scenario of that name)")
        text = shipped.read_text()
    else:
        text = path.read_text()
    return Scenario.model_validate(yaml.safe_load(text) or {})
