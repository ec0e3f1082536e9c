"""The stream job's per-partition state and logic, without Kafka or Redis (so it is unit-testable).

One Kafka record = one device batch. :meth:`Engine.apply` runs every reading of it through the
deduplication, the windows and the detectors in plain Python, and collects what must happen outside
(:class:`Effects`): aggregates and alerts to produce, Redis updates, and which device states changed
and must be snapshotted. :meth:`Engine.tick` does the wall-clock work (closing windows of quiet
devices, silence detection).

State is kept per Kafka partition of the readings topic (a device always hashes to the same
partition), together with ``next_offset``: the offset after the last record whose effects are in the
state. The stream job snapshots dirty device states and ``next_offset`` in one Redis transaction before
it acks the records, so after a restart or rebalance the new owner loads the snapshot and skips the
records below ``next_offset`` that Kafka redelivers (the committed offset may lag the snapshot).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import orjson

from stream_jobs.detectors import DeviceDetector, RuleSet
from stream_jobs.windows import DROPPED, LATE, DeviceWindows

SEEN_BITS = 64
SEEN_MASK = (1 << SEEN_BITS) - 1


class DeviceState:
    """Windows, detectors and the dedup memory (newest seq + a bitmask of the 64 seqs below it)."""

    __slots__ = ("detector", "device_type", "max_seq", "seen", "windows")

    def __init__(self, windows: DeviceWindows, detector: DeviceDetector, device_type: str) -> None:
        self.windows = windows
        self.detector = detector
        self.device_type = device_type
        self.max_seq = -1
        self.seen = 0

    def classify(self, seq: int) -> int:
        """0 = new and in order, 1 = new but out of order, 2 = duplicate (or too old to tell)."""
        if seq > self.max_seq:
            shift = seq - self.max_seq
            self.seen = ((self.seen << shift) | 1) & SEEN_MASK if shift < SEEN_BITS else 1
            self.max_seq = seq
            return 0
        back = self.max_seq - seq
        if back >= SEEN_BITS or (self.seen >> back) & 1:
            return 2
        self.seen |= 1 << back
        return 1

    def to_state(self) -> dict:
        return {
            "type": self.device_type,
            "seq": self.max_seq,
            "seen": self.seen,
            "w": self.windows.to_state(),
            "d": self.detector.to_state(),
        }


@dataclass
class PartitionState:
    devices: dict[str, DeviceState] = field(default_factory=dict)
    next_offset: int = -1  # offset after the last applied record; -1 = none yet
    last_record_ms: int = 0  # Kafka timestamp of the last applied record


@dataclass
class Effects:
    aggregates: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    batches: list[tuple[dict, bytes]] = field(default_factory=list)  # (batch, raw) for latest state
    offline: list[str] = field(default_factory=list)  # devices that went silent
    alert_counts: dict[str, int] = field(default_factory=dict)  # device -> open alerts now
    dirty: dict[int, set[str]] = field(default_factory=dict)  # partition -> devices to snapshot
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next_offset

    def __bool__(self) -> bool:
        return bool(self.aggregates or self.alerts or self.batches or self.offline or self.dirty or self.offsets)


class Engine:
    def __init__(self, windows_s: list[int], grace_s: float, rules: RuleSet) -> None:
        self.windows_s = list(windows_s)
        self.grace_s = grace_s
        self.rules = rules
        self.partitions: dict[int, PartitionState] = {}
        self.counters: Counter[str] = Counter()

    # ---- ownership ---------------------------------------------------------------------------------
    def load_partition(self, partition: int, snapshot: dict[bytes, bytes]) -> PartitionState:
        """Install a partition's state from its snapshot hash (field ``__offset__`` + one per device)."""
        ps = PartitionState()
        for key, raw in snapshot.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name == "__offset__":
                ps.next_offset = int(raw)
            else:
                ps.devices[name] = self._restore(name, orjson.loads(raw))
        self.partitions[partition] = ps
        return ps

    def drop_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def _restore(self, device_id: str, state: dict) -> DeviceState:
        device_type = state["type"]
        ds = DeviceState(
            DeviceWindows.from_state(device_id, device_type, self.windows_s, self.grace_s, state["w"]),
            DeviceDetector.from_state(device_id, device_type, self.rules, state["d"]),
            device_type,
        )
        ds.max_seq = state["seq"]
        ds.seen = state["seen"]
        return ds

    def _new(self, device_id: str, device_type: str) -> DeviceState:
        return DeviceState(
            DeviceWindows(device_id, device_type, self.windows_s, self.grace_s),
            DeviceDetector(device_id, device_type, self.rules),
            device_type,
        )

    # ---- records -----------------------------------------------------------------------------------
    def apply(
        self, partition: int, offset: int, raw: bytes, record_ms: int, fx: Effects, now_ms: int | None = None
    ) -> bool:
        """Apply one record (a device batch) at wall time ``now_ms`` (default: the record's timestamp).
        Returns False if it was already in the state (replay)."""
        ps = self.partitions.get(partition)
        if ps is None:
            ps = self.partitions[partition] = PartitionState()
        if offset < ps.next_offset:
            self.counters["stream.replay_skipped"] += 1
            return False
        ps.next_offset = offset + 1
        ps.last_record_ms = max(ps.last_record_ms, record_ms)
        fx.offsets[partition] = ps.next_offset
        c = self.counters
        c["stream.records"] += 1
        try:
            batch = orjson.loads(raw)
            device_id = batch["device_id"]
            device_type = batch["device_type"]
            readings = batch["readings"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            c["stream.invalid"] += 1
            return True
        ds = ps.devices.get(device_id)
        if ds is None:
            ds = ps.devices[device_id] = self._new(device_id, device_type)
        windows, detector = ds.windows, ds.detector
        # Silence is measured from when the stream saw the device's data, not from the gateway's rx:
        # a backlog (worker restart, lag) must not look like silent devices.
        arrival = record_ms if now_ms is None else now_ms
        fresh = False
        n_alerts = len(fx.alerts)
        for r in readings:
            kind = ds.classify(r["seq"])
            if kind == 2:
                c["stream.duplicates"] += 1
                continue
            fresh = True
            c["stream.readings"] += 1
            outcome = windows.add(r["ts"], r["metrics"])
            if outcome == LATE:
                c["stream.late"] += 1
            elif outcome == DROPPED:
                c["stream.dropped_late"] += 1
            if kind == 0:
                fx.alerts.extend(detector.observe(r["ts"], arrival, r["metrics"]))
            else:
                c["stream.out_of_order"] += 1
        if fresh:
            fx.batches.append((batch, raw))
            fx.aggregates.extend(windows.due(None))
        if len(fx.alerts) != n_alerts:
            fx.alert_counts[device_id] = detector.open_count()
        fx.dirty.setdefault(partition, set()).add(device_id)
        return True

    # ---- wall clock --------------------------------------------------------------------------------
    def tick(self, now_ms: int, caught_up: set[int], fx: Effects) -> None:
        """Close due windows and detect silence, for the partitions whose backlog is processed (on a
        partition still catching up, the wall clock would turn its backlog into 'late' and 'silent')."""
        for partition, ps in self.partitions.items():
            if partition not in caught_up:
                continue
            for device_id, ds in ps.devices.items():
                changed = False
                if ds.windows.has_open():
                    due = ds.windows.due(now_ms)
                    if due:
                        fx.aggregates.extend(due)
                        changed = True
                alerts = ds.detector.check_silence(now_ms)
                if alerts:
                    fx.alerts.extend(alerts)
                    fx.offline.append(device_id)
                    fx.alert_counts[device_id] = ds.detector.open_count()
                    changed = True
                if changed:
                    fx.dirty.setdefault(partition, set()).add(device_id)

    def device(self, partition: int, device_id: str) -> DeviceState | None:
        ps = self.partitions.get(partition)
        return ps.devices.get(device_id) if ps else None
