"""The stream job's per-partition state and logic, without Kafka or Redis (so it is unit-testable).

One Kafka record = one device batch, or (partition mode, ``IOTP_KAFKA_RECORD_MODE=partition``) a
:class:`iotp.schema.PartitionBatch` of many device batches of the record's partition, each applied in turn.
:meth:`Engine.apply` runs every reading of it through the
deduplication, the windows and the detectors in plain Python, and collects what must happen outside
(:class:`Effects`): aggregates and alerts to produce, Redis updates, and which device states changed
and must be snapshotted. :meth:`Engine.tick` does the wall-clock work (closing windows of quiet
devices, silence detection).

State is kept per Kafka partition of the readings topic (a device always hashes to the same
partition), together with ``next_offset``: the offset after the last record whose effects are in the
state. The stream job snapshots dirty device states and ``next_offset`` in one Redis transaction before
it acks the records, so after a restart or rebalance the new owner loads the snapshot and skips the
records below ``next_offset`` that Kafka redelivers (the committed offset may lag the snapshot).

An offset is only meaningful in one incarnation of the topic (a wiped broker or a recreated topic numbers
from 0 again), so the snapshot also stores the fingerprint of the record at ``next_offset - 1``
(:class:`iotp.kafka_marks.Mark`); the stream job checks it against Kafka and calls :meth:`Engine.reset_offset`
when it does not match. Device states (windows, detectors, seq dedup) are about devices, not offsets, and
stay.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import chain

import orjson

from iotp.kafka_marks import Mark, fingerprint
from iotp.schema import AlertEvent, WindowAggregateEvent, device_batches, key_of
from stream_jobs.detectors import DeviceDetector, RuleSet
from stream_jobs.windows import DROPPED, LATE, DeviceWindows

DEDUP_MEMORY = 64  # identities remembered per device (the old seq bitmask also covered 64)
NEW, OUT_OF_ORDER, DUPLICATE = 0, 1, 2
NONE = (-1, -1)


class DeviceState:
    """Windows, detectors and the dedup memory of one device.

    A reading's identity is ``(ts, key)`` (``key`` = seq, or the metrics hash of a seq-less device, see
    ``iotp.schema``), and identities are ordered the same way: time first. The dedup memory is the newest
    identity (the order watermark), the last :data:`DEDUP_MEMORY` identities seen, and ``floor``, the largest
    identity that fell out of the memory. A rebooted device (seq back to 1, time forward) is therefore simply
    newer, not a duplicate."""

    __slots__ = ("detector", "device_type", "floor", "newest", "recent", "seen", "windows")

    def __init__(self, windows: DeviceWindows, detector: DeviceDetector, device_type: str) -> None:
        self.windows = windows
        self.detector = detector
        self.device_type = device_type
        self.newest: tuple[int, int] = NONE
        self.floor: tuple[int, int] = NONE
        self.recent: deque[tuple[int, int]] = deque()  # arrival order, for eviction
        self.seen: set[tuple[int, int]] = set()

    def classify(self, ts: int, key: int, backfill: bool = False) -> int:
        """NEW (newest so far), OUT_OF_ORDER (older than the newest, not seen), or DUPLICATE (seen, or at or
        below ``floor`` so too old to tell). A ``backfill`` reading at or below ``floor`` is taken as new: it
        only reaches history and counters, and ClickHouse keeps its own exact idempotence."""
        ident = (ts, key)
        if ident in self.seen or (ident <= self.floor and not backfill):
            return DUPLICATE
        self.seen.add(ident)
        self.recent.append(ident)
        if len(self.recent) > DEDUP_MEMORY:
            old = self.recent.popleft()
            self.seen.discard(old)
            if old > self.floor:
                self.floor = old
        if ident > self.newest:
            self.newest = ident
            return NEW
        return OUT_OF_ORDER

    def to_state(self) -> dict:
        # "r": the memory as flat absolute (ts, key) pairs, built at C speed. (The earlier "m", distances from
        # the newest, was 3 of a device's 4 us of snapshot encoding -- snapshots are written for every dirty
        # device on every flush, so per reading at 1 reading per device per flush; restore reads both.)
        return {
            "type": self.device_type,
            "n": list(self.newest),
            "f": list(self.floor),
            "r": list(chain.from_iterable(self.recent)),
            "w": self.windows.to_state(),
            "d": self.detector.to_state(),
        }

    def restore_dedup(self, state: dict) -> None:
        """From :meth:`to_state` (``r``), an earlier one (``m``: distances from the newest), or from a
        snapshot of the seq-bitmask era (``seq``/``seen``): then the
        newest identity is (window watermark, seq) and everything at or before it counts as seen once."""
        if "r" in state:
            self.newest = tuple(state["n"])
            self.floor = tuple(state["f"])
            flat = state["r"]
            self.recent.extend(zip(flat[::2], flat[1::2], strict=True))
            self.seen.update(self.recent)
        elif "n" in state:
            self.newest = tuple(state["n"])
            self.floor = tuple(state["f"])
            nts, nkey = self.newest
            memory = state.get("m", [])
            for i in range(0, len(memory) - 1, 2):
                dk = memory[i + 1]
                ident = (nts - memory[i], int(dk) if isinstance(dk, str) else nkey - dk)
                self.recent.append(ident)
                self.seen.add(ident)
        elif "seq" in state:
            self.newest = self.floor = (self.windows.watermark, int(state["seq"]))


def _orderable(r: dict) -> bool:
    try:
        return isinstance(r["ts"], int) and isinstance(key_of(r), int)
    except KeyError:
        return False


@dataclass
class PartitionState:
    devices: dict[str, DeviceState] = field(default_factory=dict)
    next_offset: int = -1  # offset after the last applied record; -1 = none yet
    last_record_ms: int = 0  # Kafka timestamp of the last applied record
    last_ms: int = 0  # Kafka timestamp and value of the record at next_offset - 1 (the mark's fingerprint)
    last_value: bytes | None = None
    loaded_fp: str = ""  # the fingerprint read with the snapshot, until a record is applied
    held_since: int | None = None  # wall ms since which silence detection is held (None: live)

    def mark(self) -> Mark | None:
        """``next_offset`` with the fingerprint of the record below it (None before any record)."""
        if self.next_offset <= 0:
            return None
        fp = fingerprint(self.last_ms, self.last_value) if self.last_value is not None else self.loaded_fp
        return Mark(self.next_offset, fp)


@dataclass
class Effects:
    aggregates: list[WindowAggregateEvent] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    batches: list[dict] = field(default_factory=list)  # device batches with new readings, for latest state
    published: list[bytes] = field(default_factory=list)  # readings pub/sub messages (records as received)
    offline: list[str] = field(default_factory=list)  # devices that went silent
    alert_counts: dict[str, int] = field(default_factory=dict)  # device -> open alerts now
    dirty: dict[int, set[str]] = field(default_factory=dict)  # partition -> devices to snapshot
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next_offset

    def __bool__(self) -> bool:
        return bool(self.aggregates or self.alerts or self.batches or self.offline or self.dirty or self.offsets)


class Engine:
    def __init__(self, windows_s: list[int], grace_s: float, rules: RuleSet, idle_close_s: float = 0.0) -> None:
        """``idle_close_s``: the wall clock closes a device's due windows only once nothing arrived from it
        for this long (see :meth:`tick`); 0 = whenever they are due."""
        self.windows_s = list(windows_s)
        self.grace_s = grace_s
        self.rules = rules
        self.idle_close_ms = int(idle_close_s * 1000)
        self.partitions: dict[int, PartitionState] = {}
        self.counters: Counter[str] = Counter()

    # ---- ownership ---------------------------------------------------------------------------------
    def load_partition(self, partition: int, snapshot: dict[bytes, bytes]) -> PartitionState:
        """Install a partition's state from its snapshot hash (``__offset__``, ``__mark__`` + one field per
        device). A snapshot without ``__mark__`` (older format) has an empty fingerprint, which no check
        accepts. Silence detection starts held, from when the partition last saw a reading: the worker's
        downtime is not the devices' silence (see :meth:`tick`)."""
        ps = PartitionState()
        for key, raw in snapshot.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name == "__offset__":
                ps.next_offset = int(raw)
            elif name == "__mark__":
                ps.loaded_fp = Mark.decode(raw).fingerprint if raw else ""
            else:
                ps.devices[name] = self._restore(name, orjson.loads(raw))
        seen = [ds.detector.last_rx for ds in ps.devices.values() if ds.detector.last_rx >= 0]
        ps.held_since = max(seen) if seen else None
        self.partitions[partition] = ps
        return ps

    def reset_offset(self, partition: int, fx: Effects | None = None) -> None:
        """Forget the partition's offset (it belongs to another incarnation of the topic): from now on no
        record is skipped as a replay. Device states stay; a re-read reading is a duplicate by its id."""
        ps = self.partitions.get(partition)
        if ps is None:
            return
        ps.next_offset = -1
        ps.last_value = None
        ps.loaded_fp = ""
        self.counters["stream.reset_discarded"] += 1
        if fx is not None:
            fx.offsets[partition] = -1

    def drop_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def _restore(self, device_id: str, state: dict) -> DeviceState:
        device_type = state["type"]
        ds = DeviceState(
            DeviceWindows.from_state(device_id, device_type, self.windows_s, self.grace_s, state["w"]),
            DeviceDetector.from_state(device_id, device_type, self.rules, state["d"]),
            device_type,
        )
        ds.restore_dedup(state)
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
        ps.last_ms, ps.last_value = record_ms, raw
        fx.offsets[partition] = ps.next_offset
        c = self.counters
        c["stream.records"] += 1
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            c["stream.invalid"] += 1
            return True
        # Silence is measured from when the stream saw the device's data, not from the gateway's rx:
        # a backlog (worker restart, lag) must not look like silent devices.
        arrival = record_ms if now_ms is None else now_ms
        batches = device_batches(value)
        dirty = fx.dirty.get(partition)
        if dirty is None:
            dirty = fx.dirty[partition] = set()
        if len(batches) == 1 and batches[0] is value:  # device mode: publish the record as received
            if self._apply_batch(ps, dirty, value, fx, arrival):
                fx.published.append(raw)
            return True
        fresh = [batch for batch in batches if self._apply_batch(ps, dirty, batch, fx, arrival)]
        if fresh:  # the record as received, unless some device batches in it were duplicates
            fx.published.append(raw if len(fresh) == len(batches) else orjson.dumps({"v": 1, "batches": fresh}))
        return True

    def _apply_batch(self, ps: PartitionState, dirty: set[str], batch: dict, fx: Effects, arrival: int) -> bool:
        """One device batch; True if it had new readings (then it is in ``fx.batches``). The device goes into
        ``dirty`` (the partition's set in ``fx.dirty``)."""
        c = self.counters
        try:
            device_id = batch["device_id"]
            device_type = batch["device_type"]
            readings = batch["readings"]
        except (KeyError, TypeError):
            c["stream.invalid"] += 1
            return False
        ds = ps.devices.get(device_id)
        if ds is None:
            ds = ps.devices[device_id] = self._new(device_id, device_type)
        windows, detector = ds.windows, ds.detector
        fresh = invalid = False
        n_alerts = len(fx.alerts)
        for r in readings:
            try:
                backfill = bool(r.get("bf"))
                kind = ds.classify(r["ts"], key_of(r), backfill)
            except (KeyError, TypeError, AttributeError):
                c["stream.invalid"] += 1
                invalid = True
                continue
            if kind == DUPLICATE:
                c["stream.duplicates"] += 1
                continue
            fresh = True
            c["stream.readings"] += 1
            if backfill:  # a buffered upload: history and the latest state (if newer) only
                c["stream.backfill"] += 1
                continue
            outcome = windows.add(r["ts"], r["metrics"])
            if outcome == LATE:
                c["stream.late"] += 1
            elif outcome == DROPPED:
                c["stream.dropped_late"] += 1
            if kind == NEW:
                fx.alerts.extend(detector.observe(r["ts"], arrival, r["metrics"]))
            else:
                c["stream.out_of_order"] += 1
        if fresh:
            if invalid:  # the latest-state writer orders readings by (ts, key): keep only those that have them
                batch["readings"] = [r for r in readings if isinstance(r, dict) and _orderable(r)]
            fx.batches.append(batch)
            fx.aggregates.extend(windows.due(None))
        if len(fx.alerts) != n_alerts:
            fx.alert_counts[device_id] = detector.open_count()
        dirty.add(device_id)
        return fresh

    # ---- wall clock --------------------------------------------------------------------------------
    def tick(self, now_ms: int, caught_up: set[int], fx: Effects, live: set[int] | None = None) -> None:
        """Close due windows for the partitions whose backlog is processed (on a partition still catching
        up, the wall clock would turn its backlog into 'late'), and detect silence on the ``live`` ones
        (default: ``caught_up``; the stream job also requires a live gateway).

        Silence is about devices, not the pipeline: while a partition is not live its silence clock is
        held, and when it becomes live again every device's deadline moves forward by the time it was held
        (:meth:`_resume_silence`), so a restart, a backlog or a gateway outage does not become a storm of
        ``silence`` alerts.

        The wall clock closes the windows of *idle* devices only (nothing arrived for ``idle_close_s``): a
        live device closes its own on event time, when its next reading passes ``end + grace``. Every
        device's windows end at the same epoch-aligned instant, so closing them all on the first tick
        after ``end + grace`` made one flush of every device's aggregates at once (25,000 at 5,000 devices
        x 5 metrics, every 10 s), a stall that every reading in flight waited for; on event time they
        close spread over the devices' reporting phases, in the flushes that carry their readings."""
        live = caught_up if live is None else live
        idle_before = now_ms - self.idle_close_ms
        for partition, ps in self.partitions.items():
            if partition not in live:
                if ps.held_since is None:
                    ps.held_since = now_ms
            elif ps.held_since is not None:
                self._resume_silence(partition, ps, now_ms, fx)
            if partition not in caught_up:
                continue
            for device_id, ds in ps.devices.items():
                changed = False
                if ds.windows.has_open() and ds.detector.last_rx <= idle_before:
                    due = ds.windows.due(now_ms)
                    if due:
                        fx.aggregates.extend(due)
                        changed = True
                alerts = ds.detector.check_silence(now_ms) if partition in live else None
                if alerts:
                    fx.alerts.extend(alerts)
                    fx.offline.append(device_id)
                    fx.alert_counts[device_id] = ds.detector.open_count()
                    changed = True
                if changed:
                    fx.dirty.setdefault(partition, set()).add(device_id)

    def _resume_silence(self, partition: int, ps: PartitionState, now_ms: int, fx: Effects) -> None:
        held = now_ms - (ps.held_since or now_ms)
        ps.held_since = None
        if held <= 0:
            return
        for device_id, ds in ps.devices.items():
            last = ds.detector.last_rx
            if last < 0:
                continue
            moved = min(now_ms, last + held)  # seen while held (backlog replay): as if seen just now
            if moved != last:
                ds.detector.last_rx = moved
                fx.dirty.setdefault(partition, set()).add(device_id)

    def held(self) -> int:
        """Partitions whose silence detection is held (the pipeline, not the devices, is behind or down)."""
        return sum(ps.held_since is not None for ps in self.partitions.values())

    def device(self, partition: int, device_id: str) -> DeviceState | None:
        ps = self.partitions.get(partition)
        return ps.devices.get(device_id) if ps else None
