"""Signal models per device type: daily cycles, noise, and metrics that move together.

A device profile (``iotp.profiles``) names the model in ``simulation``: one of the three built-in
correlated models (climate, vibration, power), or ``generic`` -- every metric a daily cycle plus noise
around a per-device baseline, derived from the metric's normal range unless its ``signal`` says
otherwise. A built-in model emits only the metrics the profile lists, and metrics it does not know are
generated the generic way, so a profile may add or drop metrics of a built-in type.

Pure functions of (device parameters, time, random generator) so they are easy to test and replay.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from iotp.profiles import DeviceProfile, MetricProfile

DAY_S = 86400.0
BUILT_IN = {
    "climate": ("temperature", "humidity", "co2"),
    "vibration": ("rpm", "rms_velocity", "peak_accel", "bearing_temp"),
    "power": ("voltage", "current", "power_kw", "power_factor", "frequency"),
}


@dataclass(frozen=True, slots=True)
class GenericMetric:
    """One metric of the generic model: ``base + amplitude * daily cycle + noise``, kept in [lo, hi]."""

    base: float
    amplitude: float
    noise: float
    lo: float
    hi: float

    @classmethod
    def draw(cls, spec: MetricProfile, rng: random.Random) -> GenericMetric:
        width = spec.normal_max - spec.normal_min
        sig = spec.signal
        centre = sig.baseline if sig.baseline is not None else (spec.normal_min + spec.normal_max) / 2
        amplitude = sig.daily_amplitude if sig.daily_amplitude is not None else 0.1 * width
        noise = sig.noise if sig.noise is not None else 0.01 * width
        # devices differ a little; without an explicit baseline a quiet signal stays inside the normal range
        # (cycle and 3 sigma of noise included, where the range is wide enough)
        base = centre + rng.uniform(-0.15, 0.15) * width
        margin = amplitude + 3 * noise
        if sig.baseline is None:
            base = min(spec.normal_max - margin, max(spec.normal_min + margin, base)) if 2 * margin < width else centre
        return cls(base, amplitude, noise, spec.valid_min, spec.valid_max)

    def sample(self, day: float, rng: random.Random) -> float:
        value = self.base + self.amplitude * day + (rng.gauss(0, self.noise) if self.noise else 0.0)
        return round(min(self.hi, max(self.lo, value)), 4)


@dataclass
class DeviceSignal:
    device_id: str
    device_type: str
    rng: random.Random
    phase: float = 0.0  # shifts the daily cycle per device
    base: dict[str, float] = field(default_factory=dict)
    model: str = ""  # built-in model name; "" = the device type's name (generic if none)
    generic: dict[str, GenericMetric] = field(default_factory=dict)
    keep: frozenset[str] | None = None  # metrics of the built-in model to emit (None = all)

    def sample(self, t: float) -> dict[str, float]:
        day = math.sin(2 * math.pi * ((t / DAY_S) + self.phase))
        model = self.model or self.device_type
        values = self._built_in(model, day) if model in BUILT_IN else {}
        if self.keep is not None:
            values = {k: v for k, v in values.items() if k in self.keep}
        for name, gen in self.generic.items():
            values[name] = gen.sample(day, self.rng)
        if not values:
            raise ValueError(f"device type {self.device_type!r} has no signal model and no generic metrics")
        return values

    def _built_in(self, model: str, day: float) -> dict[str, float]:
        g = self.rng.gauss
        if model == "climate":
            occupancy = max(0.0, day)  # people in the room during the day push CO2 and heat up
            temp = self.base["temperature"] + 3.0 * day + g(0, 0.15)
            return {
                "temperature": round(temp, 3),
                "humidity": round(self.base["humidity"] - 1.5 * (temp - self.base["temperature"]) + g(0, 0.5), 3),
                "co2": round(self.base["co2"] + 400.0 * occupancy + g(0, 8.0), 2),
            }
        if model == "vibration":
            load = 0.75 + 0.2 * day
            rpm = self.base["rpm"] * load + g(0, 5.0)
            rms = self.base["rms_velocity"] * (rpm / self.base["rpm"]) ** 2 + abs(g(0, 0.05))
            return {
                "rpm": round(rpm, 2),
                "rms_velocity": round(rms, 4),
                "peak_accel": round(rms * 0.9 + abs(g(0, 0.1)), 4),
                "bearing_temp": round(self.base["bearing_temp"] + 10.0 * load + g(0, 0.2), 3),
            }
        if model == "power":
            load = 0.5 + 0.4 * day
            current = self.base["current"] * load + g(0, 0.3)
            voltage = 230.0 - 0.05 * current + g(0, 0.8)
            pf = min(1.0, max(0.0, 0.95 - 0.02 * load + g(0, 0.005)))
            return {
                "voltage": round(voltage, 2),
                "current": round(max(0.0, current), 3),
                "power_kw": round(max(0.0, voltage * current * pf / 1000.0), 4),
                "power_factor": round(pf, 4),
                "frequency": round(50.0 + g(0, 0.02), 4),
            }
        raise ValueError(f"unknown signal model {model!r}")


def new_signal(
    device_id: str, device_type: str, rng: random.Random, profile: DeviceProfile | None = None
) -> DeviceSignal:
    """A device's signal; with a ``profile`` its model and metrics come from the profile."""
    model = profile.simulation if profile is not None else device_type
    if model not in BUILT_IN:
        if profile is None:
            raise ValueError(f"unknown device type {device_type!r}")
        model = "generic"
    base = _built_in_base(model, rng) if model in BUILT_IN else {}
    signal = DeviceSignal(device_id, device_type, random.Random(rng.random()), rng.random(), base, model)
    if profile is not None:
        known = set(BUILT_IN.get(model, ()))
        signal.keep = frozenset(profile.metrics) & known
        signal.generic = {m: GenericMetric.draw(spec, rng) for m, spec in profile.metrics.items() if m not in known}
    return signal


def _built_in_base(model: str, rng: random.Random) -> dict[str, float]:
    if model == "climate":
        base = {"temperature": rng.uniform(19, 24), "humidity": rng.uniform(35, 50), "co2": rng.uniform(420, 600)}
    elif model == "vibration":
        base = {
            "rpm": rng.uniform(1500, 3000),
            "rms_velocity": rng.uniform(1.0, 3.0),
            "bearing_temp": rng.uniform(35, 50),
        }
    else:
        base = {"current": rng.uniform(10, 40)}
    return base
