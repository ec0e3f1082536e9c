"""Build a fleet of devices: ids, types and per-device sequence counters."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from iotp.devices import DEVICE_TYPES
from simulator.signals import DeviceSignal, new_signal

DEFAULT_MIX = {"climate": 0.4, "vibration": 0.3, "power": 0.3}


@dataclass
class Device:
    signal: DeviceSignal
    seq: int

    @property
    def device_id(self) -> str:
        return self.signal.device_id

    @property
    def device_type(self) -> str:
        return self.signal.device_type

    def next_reading(self, now_s: float) -> dict:
        return self.reading_at(int(now_s * 1000))

    def reading_at(self, ts_ms: int) -> dict:
        self.seq += 1
        return {
            "v": 1,
            "device_id": self.device_id,
            "device_type": self.device_type,
            "seq": self.seq,
            "ts": ts_ms,
            "metrics": self.signal.sample(ts_ms / 1000),
        }


def build_fleet(
    count: int, seed: int | None = None, mix: dict[str, float] | None = None, prefix: str = "", seq0: int | None = None
) -> list[Device]:
    """``count`` devices with deterministic ids and signals for a given seed.

    Sequence numbers start after ``seq0``, by default the current epoch millisecond, so a restarted
    simulator never reuses a reading id of a device (while it publishes at most 1000 readings/s per device).
    """
    rng = random.Random(seed)
    mix = mix or DEFAULT_MIX
    types = [t for t in mix if mix[t] > 0]
    unknown = [t for t in types if t not in DEVICE_TYPES]
    if unknown:
        raise ValueError(f"unknown device types {unknown}; known: {', '.join(DEVICE_TYPES)}")
    weights = [mix[t] for t in types]
    seq0 = int(time.time() * 1000) if seq0 is None else seq0
    devices = []
    for i in range(count):
        device_type = rng.choices(types, weights)[0]
        device_id = f"{prefix}{device_type}-{i:05d}"
        devices.append(Device(new_signal(device_id, device_type, rng), seq0))
    return devices
