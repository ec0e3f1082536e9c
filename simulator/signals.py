"""Signal models per device type: daily cycles, noise, and metrics that move together.

Pure functions of (device parameters, time, random generator) so they are easy to test and replay.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY_S = 86400.0


@dataclass
class DeviceSignal:
    device_id: str
    device_type: str
    rng: random.Random
    phase: float = 0.0  # shifts the daily cycle per device
    base: dict[str, float] = field(default_factory=dict)

    def sample(self, t: float) -> dict[str, float]:
        day = math.sin(2 * math.pi * ((t / DAY_S) + self.phase))
        g = self.rng.gauss
        if self.device_type == "climate":
            occupancy = max(0.0, day)  # people in the room during the day push CO2 and heat up
            temp = self.base["temperature"] + 3.0 * day + g(0, 0.15)
            return {
                "temperature": round(temp, 3),
                "humidity": round(self.base["humidity"] - 1.5 * (temp - self.base["temperature"]) + g(0, 0.5), 3),
                "co2": round(self.base["co2"] + 400.0 * occupancy + g(0, 8.0), 2),
            }
        if self.device_type == "vibration":
            load = 0.75 + 0.2 * day
            rpm = self.base["rpm"] * load + g(0, 5.0)
            rms = self.base["rms_velocity"] * (rpm / self.base["rpm"]) ** 2 + abs(g(0, 0.05))
            return {
                "rpm": round(rpm, 2),
                "rms_velocity": round(rms, 4),
                "peak_accel": round(rms * 0.9 + abs(g(0, 0.1)), 4),
                "bearing_temp": round(self.base["bearing_temp"] + 10.0 * load + g(0, 0.2), 3),
            }
        if self.device_type == "power":
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
        raise ValueError(f"unknown device type {self.device_type!r}")


def new_signal(device_id: str, device_type: str, rng: random.Random) -> DeviceSignal:
    if device_type == "climate":
        base = {"temperature": rng.uniform(19, 24), "humidity": rng.uniform(35, 50), "co2": rng.uniform(420, 600)}
    elif device_type == "vibration":
        base = {
            "rpm": rng.uniform(1500, 3000),
            "rms_velocity": rng.uniform(1.0, 3.0),
            "bearing_temp": rng.uniform(35, 50),
        }
    elif device_type == "power":
        base = {"current": rng.uniform(10, 40)}
    else:
        raise ValueError(f"unknown device type {device_type!r}")
    return DeviceSignal(device_id, device_type, random.Random(rng.random()), rng.random(), base)
