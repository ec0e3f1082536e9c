"""Build a fleet of devices: ids, types and per-device sequence counters."""

from __future__ import annotations

import random
from dataclasses import dataclass

from iotp.profiles import Profiles, shipped_profiles
from iotp.schema import now_ms
from simulator.signals import DeviceSignal, new_signal

DEFAULT_MIX = {"climate": 0.4, "vibration": 0.3, "power": 0.3}


@dataclass
class Device:
    """One simulated device. Like real ones it may send no ``seq`` (``has_seq=False``) or reboot every
    ``reboot_every`` readings, restarting its ``seq`` at 1 (identity is device, ts and seq: see iotp.schema)."""

    signal: DeviceSignal
    seq: int
    has_seq: bool = True
    reboot_every: int = 0
    sent: int = 0

    @property
    def device_id(self) -> str:
        return self.signal.device_id

    @property
    def device_type(self) -> str:
        return self.signal.device_type

    def next_reading(self, now_s: float) -> dict:
        return self.reading_at(int(now_s * 1000))

    def reading_at(self, ts_ms: int) -> dict:
        if self.reboot_every and self.sent and self.sent % self.reboot_every == 0:
            self.seq = 0  # rebooted: the counter starts again
        self.sent += 1
        self.seq += 1
        reading = {
            "v": 1,
            "device_id": self.device_id,
            "device_type": self.device_type,
            "seq": self.seq,
            "ts": ts_ms,
            "metrics": self.signal.sample(ts_ms / 1000),
        }
        if not self.has_seq:
            del reading["seq"]
        return reading


def build_fleet(
    count: int,
    seed: int | None = None,
    mix: dict[str, float] | None = None,
    prefix: str = "",
    seq0: int | None = None,
    profiles: Profiles | None = None,
    reboot_every: int = 0,
    no_seq_fraction: float = 0.0,
) -> list[Device]:
    """``count`` devices with deterministic ids (the same on every start) and, for a given seed,
    deterministic signals, of the types in ``mix``
    (weights), each described by its device profile (default: the shipped profiles).

    Sequence numbers start after ``seq0``, by default the current epoch millisecond, so a restarted
    simulator never reuses a reading id of a device (while it publishes at most 1000 readings/s per device).
    ``reboot_every``: readings between reboots of every device (0 = never); ``no_seq_fraction``: that share
    of the devices (spread evenly over the ids) sends no ``seq`` at all.
    """
    rng = random.Random(seed)
    # The fleet's layout (which id has which type) is the same on every start, seed or not: a restarted
    # simulator is the same fleet coming back, as real devices would, not a new fleet whose predecessors all
    # fall silent. The signals and anomalies stay random without a seed.
    layout = random.Random(f"fleet-layout:{seed if seed is not None else 0}")
    mix = mix or DEFAULT_MIX
    types = [t for t in mix if mix[t] > 0]
    profiles = shipped_profiles() if profiles is None else profiles
    unknown = [t for t in types if t not in profiles]
    if unknown:
        raise ValueError(f"device types without a profile: {unknown}; known: {', '.join(sorted(profiles))}")
    weights = [mix[t] for t in types]
    seq0 = now_ms() if seq0 is None else seq0
    devices = []
    for i in range(count):
        device_type = layout.choices(types, weights)[0]
        device_id = f"{prefix}{device_type}-{i:05d}"
        has_seq = int((i + 1) * no_seq_fraction) == int(i * no_seq_fraction)
        signal = new_signal(device_id, device_type, rng, profiles[device_type])
        devices.append(Device(signal, seq0, has_seq=has_seq, reboot_every=reboot_every))
    return devices
