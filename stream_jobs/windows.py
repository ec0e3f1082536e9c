"""Per device x metric tumbling windows: pure Python, no Kafka, no clock of its own.

Windows are epoch-aligned on the reading's event time (``ts``): ``start = ts - ts % size``. A window
accumulates count, min, max and Welford mean/M2 (numerically stable std). It closes

* on **event time**, when the device's watermark (the largest ``ts`` seen from it) passes
  ``end + grace``; or
* on **wall clock**, when ``now >= end + grace`` -- so a device that goes quiet still gets its windows
  emitted. The caller decides whether the wall clock may be used (the stream job only allows it for a
  partition that is caught up, so a backlog or a replay after a restart is not dropped as "late").

A reading whose window is still open but whose device watermark is already past the window end is
*late* (it is counted in the window and in ``late``). A reading whose window has already been closed
is *dropped* (counted, never silently lost).

State is plain data (:meth:`DeviceWindows.to_state` / :meth:`DeviceWindows.from_state`) so that the
stream job can snapshot it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from iotp.schema import SCHEMA_VERSION, WindowAggregateEvent

ACCEPTED, LATE, DROPPED = 0, 1, 2


@dataclass(slots=True)
class Acc:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    late: int = 0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    @property
    def std(self) -> float:
        """Population standard deviation of the window's readings."""
        return math.sqrt(self.m2 / self.count) if self.count > 1 and self.m2 > 0 else 0.0

    def to_state(self) -> list:
        return [self.count, self.mean, self.m2, self.min, self.max, self.late]

    @classmethod
    def from_state(cls, state: list) -> Acc:
        return cls(*state)


class DeviceWindows:
    """All open windows of one device, for every configured window size and metric."""

    __slots__ = ("closed_until", "device_id", "device_type", "grace_ms", "open", "sizes_ms", "watermark")

    def __init__(self, device_id: str, device_type: str, sizes_s: list[int], grace_s: float) -> None:
        self.device_id = device_id
        self.device_type = device_type
        self.sizes_ms = [int(s * 1000) for s in sizes_s]
        self.grace_ms = int(grace_s * 1000)
        self.watermark = -1
        # size_ms -> {start_ms -> {metric -> Acc}}
        self.open: dict[int, dict[int, dict[str, Acc]]] = {size: {} for size in self.sizes_ms}
        # size_ms -> end of the newest closed window (readings before it are dropped)
        self.closed_until: dict[int, int] = {size: -1 for size in self.sizes_ms}

    def add(self, ts: int, metrics: dict[str, float]) -> int:
        """Add one reading; return ACCEPTED, LATE or DROPPED (worst over the window sizes)."""
        outcome = ACCEPTED
        wm = self.watermark
        for size in self.sizes_ms:
            start = ts - ts % size
            if start + size <= self.closed_until[size]:
                outcome = DROPPED
                continue
            by_start = self.open[size]
            accs = by_start.get(start)
            if accs is None:
                accs = by_start[start] = {}
            late = wm >= start + size
            for name, value in metrics.items():
                acc = accs.get(name)
                if acc is None:
                    acc = accs[name] = Acc()
                acc.add(value)
                if late:
                    acc.late += 1
            if late and outcome == ACCEPTED:
                outcome = LATE
        if ts > wm:
            self.watermark = ts
        return outcome

    def due(self, now_ms: int | None) -> list[WindowAggregateEvent]:
        """Close and return the windows that are due: by event time always, by wall clock when ``now_ms``
        is given. Each result is a dict shaped like :class:`iotp.schema.WindowAggregate`."""
        out: list[WindowAggregateEvent] = []
        for size in self.sizes_ms:
            by_start = self.open[size]
            if not by_start:
                continue
            for start in sorted(by_start):
                end = start + size
                deadline = end + self.grace_ms
                if self.watermark >= deadline or (now_ms is not None and now_ms >= deadline):
                    accs = by_start.pop(start)
                    if end > self.closed_until[size]:
                        self.closed_until[size] = end
                    for name, acc in accs.items():
                        out.append(self._aggregate(name, size, start, acc))
                else:
                    break  # windows are closed in start order
        return out

    def _aggregate(self, metric: str, size: int, start: int, acc: Acc) -> WindowAggregateEvent:
        return WindowAggregateEvent(
            v=SCHEMA_VERSION,
            device_id=self.device_id,
            device_type=self.device_type,
            metric=metric,
            window_s=size // 1000,
            start=start,
            end=start + size,
            count=acc.count,
            min=acc.min,
            max=acc.max,
            mean=acc.mean,
            std=acc.std,
            late=acc.late,
        )

    def has_open(self) -> bool:
        return any(self.open.values())

    def to_state(self) -> dict:
        return {
            "wm": self.watermark,
            "closed": {str(s): c for s, c in self.closed_until.items()},
            "open": {
                str(size): {
                    str(start): {m: acc.to_state() for m, acc in accs.items()} for start, accs in by_start.items()
                }
                for size, by_start in self.open.items()
                if by_start
            },
        }

    @classmethod
    def from_state(
        cls, device_id: str, device_type: str, sizes_s: list[int], grace_s: float, state: dict
    ) -> DeviceWindows:
        self = cls(device_id, device_type, sizes_s, grace_s)
        self.watermark = state.get("wm", -1)
        for size, closed in state.get("closed", {}).items():
            if int(size) in self.closed_until:
                self.closed_until[int(size)] = closed
        for size, by_start in state.get("open", {}).items():
            if int(size) not in self.open:
                continue  # the window sizes changed between runs: that size's partial windows are lost
            self.open[int(size)] = {
                int(start): {m: Acc.from_state(a) for m, a in accs.items()} for start, accs in by_start.items()
            }
        return self
