"""The device catalogue: device types, their metrics, units and the physically possible ranges.

The simulator generates these signals, the gateway rejects values outside ``valid_min``/``valid_max``
(the sensor cannot produce them), and the stream jobs use ``normal_min``/``normal_max`` as the default
threshold rules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricSpec:
    unit: str
    valid_min: float
    valid_max: float
    normal_min: float
    normal_max: float


DEVICE_TYPES: dict[str, dict[str, MetricSpec]] = {
    "climate": {
        "temperature": MetricSpec("°C", -40.0, 85.0, 15.0, 30.0),
        "humidity": MetricSpec("%", 0.0, 100.0, 20.0, 70.0),
        "co2": MetricSpec("ppm", 0.0, 10000.0, 350.0, 1500.0),
    },
    "vibration": {
        "rms_velocity": MetricSpec("mm/s", 0.0, 100.0, 0.0, 7.1),
        "peak_accel": MetricSpec("g", 0.0, 50.0, 0.0, 8.0),
        "bearing_temp": MetricSpec("°C", -20.0, 150.0, 20.0, 85.0),
        "rpm": MetricSpec("rpm", 0.0, 10000.0, 1000.0, 3600.0),
    },
    "power": {
        "voltage": MetricSpec("V", 0.0, 500.0, 207.0, 253.0),
        "current": MetricSpec("A", 0.0, 200.0, 0.0, 63.0),
        "power_kw": MetricSpec("kW", 0.0, 100.0, 0.0, 14.0),
        "power_factor": MetricSpec("", 0.0, 1.0, 0.8, 1.0),
        "frequency": MetricSpec("Hz", 40.0, 70.0, 49.8, 50.2),
    },
}
