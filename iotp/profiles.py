"""Device profiles: which device types exist, their metrics, units, ranges, expected interval and rules.

A profile is configuration, not code. The shipped profiles (``iotp/data/device_profiles.yaml``) describe
the three simulated types; ``IOTP_PROFILES_FILE`` adds types or replaces shipped ones; the API
(``PUT /api/profiles/{type}``) creates and updates them at run time through the live store in Redis
(:mod:`iotp.profile_store`). Every stage reads the same profiles:

* the gateway rejects an unknown type (or accepts it, ``IOTP_UNKNOWN_DEVICE_TYPE=accept``), an unknown
  metric of a known type, and values outside ``valid_min``/``valid_max`` (the sensor cannot produce them);
* the stream jobs build their threshold rules from ``normal_min``/``normal_max`` (or the metric's
  ``threshold`` overrides) and judge silence against ``expected_interval_s``;
* the simulator builds its fleet and signals from them; the dashboard shows their units.

This module is pure (no network): models, validation with clear messages, and loading YAML files.
See docs/device-profiles.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from iotp.schema import NAME_PATTERN

TypeName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
MetricName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Severity = Literal["info", "warning", "critical"]
# Signal models of the simulator: the three correlated built-in ones, or "generic" (each metric a daily
# cycle plus noise around a baseline, all derived from the normal range unless ``signal`` says otherwise).
SIGNAL_MODELS = ("generic", "climate", "vibration", "power")
UnknownTypePolicy = Literal["reject", "accept"]


class ProfileError(ValueError):
    """A profile (file or API body) that does not validate; the message says where and why."""


class ThresholdRule(BaseModel):
    """Overrides of the metric's threshold rule in the stream jobs (every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min: float | None = Field(None, description="alert below this (default: normal_min)")
    max: float | None = Field(None, description="alert above this (default: normal_max)")
    max_rate: float | None = Field(
        None, gt=0, description="largest plausible change per second (enables rate_of_change)"
    )
    severity: Severity = Field("warning", description="severity of a threshold alert (critical when far outside)")
    zscore: bool = True
    drift: bool = True
    flatline: bool = True
    sigma_floor: float | None = Field(None, gt=0, description="smallest noise level assumed (default 0.1% of range)")

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"threshold min {self.min} is above threshold max {self.max}")
        return self


class SignalSpec(BaseModel):
    """How the simulator's generic model generates the metric (defaults derived from the normal range)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    baseline: float | None = Field(None, description="per-device level is drawn around it (default: mid normal)")
    daily_amplitude: float | None = Field(
        None, ge=0, description="amplitude of the daily cycle (default 10% of normal)"
    )
    noise: float | None = Field(None, ge=0, description="standard deviation of the noise (default 1% of normal)")


class MetricProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    unit: str = Field("", max_length=16)
    valid_min: float = Field(description="physically possible minimum: the gateway rejects values below")
    valid_max: float = Field(description="physically possible maximum: the gateway rejects values above")
    normal_min: float = Field(description="normal operation minimum: the default threshold rule")
    normal_max: float = Field(description="normal operation maximum: the default threshold rule")
    threshold: ThresholdRule = Field(default_factory=ThresholdRule)
    signal: SignalSpec = Field(default_factory=SignalSpec)

    @model_validator(mode="after")
    def _ranges(self) -> MetricProfile:
        if not self.valid_min < self.valid_max:
            raise ValueError(f"valid_min {self.valid_min} must be below valid_max {self.valid_max}")
        if not self.normal_min <= self.normal_max:
            raise ValueError(f"normal_min {self.normal_min} must not be above normal_max {self.normal_max}")
        if not (self.valid_min <= self.normal_min and self.normal_max <= self.valid_max):
            raise ValueError(
                f"normal range [{self.normal_min}, {self.normal_max}] must lie inside the valid range "
                f"[{self.valid_min}, {self.valid_max}]"
            )
        return self


class DeviceProfile(BaseModel):
    """One device type."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    description: str = Field("", max_length=500)
    expected_interval_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="normal gap between two readings; silence is judged against the larger of this and the "
        "observed interval (None: observed only)",
    )
    simulation: Literal["generic", "climate", "vibration", "power"] = Field(
        "generic", description="simulator signal model (the built-in correlated ones, or generic)"
    )
    metrics: dict[MetricName, MetricProfile] = Field(min_length=1, max_length=64)


class ProfileFile(BaseModel):
    """A profiles YAML file: ``device_types: {<type>: <DeviceProfile>}``."""

    model_config = ConfigDict(extra="forbid")

    device_types: dict[TypeName, DeviceProfile] = Field(min_length=1)


Profiles = Mapping[str, DeviceProfile]


def describe(exc: ValidationError, root: str = "") -> str:
    """One line per problem: ``where: what`` (for files and API messages alike)."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in (root, *err["loc"]) if p != "") or "profile"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_profile(doc: object, device_type: str = "") -> DeviceProfile:
    """One profile from a decoded document, or :class:`ProfileError`."""
    try:
        return DeviceProfile.model_validate(doc)
    except ValidationError as exc:
        raise ProfileError(describe(exc, device_type)) from None


def parse_profiles(text: str, source: str = "profiles") -> dict[str, DeviceProfile]:
    """Profiles from YAML text, or :class:`ProfileError` naming ``source`` and each problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"{source}: expected a mapping with a 'device_types' key")
    try:
        return dict(ProfileFile.model_validate(doc).device_types)
    except ValidationError as exc:
        raise ProfileError(f"{source}: {describe(exc)}") from None


def default_profiles_path() -> Path:
    return Path(str(resources.files("iotp") / "data" / "device_profiles.yaml"))


def load_profiles_file(path: Path | str) -> dict[str, DeviceProfile]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read profiles file {path}: {exc.strerror or exc}") from None
    return parse_profiles(text, str(path))


@lru_cache(maxsize=1)
def shipped_profiles() -> dict[str, DeviceProfile]:
    """The packaged profiles (cached; treat as read-only)."""
    return load_profiles_file(default_profiles_path())


def file_profiles(override: Path | str | None = None) -> dict[str, DeviceProfile]:
    """The shipped profiles with the types of ``override`` (``IOTP_PROFILES_FILE``) added or replaced."""
    profiles = dict(shipped_profiles())
    if override:
        profiles.update(load_profiles_file(override))
    return profiles


def expected_interval_ms(profile: DeviceProfile | None) -> float:
    return 1000.0 * profile.expected_interval_s if profile and profile.expected_interval_s else 0.0
