"""Anomaly injection with ground truth -- pure logic, no I/O except the optional truth file.

Stable API (detector scoring builds on it)::

    from simulator.anomalies import AnomalyInjector, Anomaly, ScheduledAnomaly, KINDS

    injector = AnomalyInjector(seed=7, rate_per_device_hour=2.0,
                               profiles=profiles,                         # optional, default shipped
                               kinds={"spike": 1, "drift": 1, ...},      # optional weights
                               schedule=[ScheduledAnomaly(...)],          # optional
                               start_ms=1763800000000,                    # origin of ScheduledAnomaly.at_s
                               truth_file="truth.jsonl")                  # optional, appended
    metrics_or_none = injector.apply(device_id, device_type, ts_ms, metrics)   # None = dropout
    injector.close(end_ms)            # ends the open anomalies at end_ms and records them
    injector.truth                    # list[dict]: one dict per anomaly, in the order they ended

``apply`` must be called with the readings of one device in increasing ``ts_ms`` order (devices may
interleave). It returns the metrics to publish (a new dict when an anomaly changed them) or ``None`` when
the device is silent (dropout).

Ground truth: one JSON object per anomaly, recorded when the anomaly ends (or at ``close``, with
``end_ms`` clipped to the close time), with exactly these keys::

    {"device_id": str, "device_type": str, "metric": str | None (None for dropout),
     "kind": "spike|drift|flatline|dropout|noise|out_of_range",
     "start_ms": int, "end_ms": int, "params": {...}}

``start_ms``/``end_ms`` are inclusive bounds of the affected readings' ``ts``: every reading of that device
(and metric) with ``start_ms <= ts <= end_ms`` is anomalous (for dropout: would have been published). A
spike or out_of_range injected at random touches exactly one reading (``start_ms == end_ms``).

Kinds (``w`` = the metric's normal range width ``normal_max - normal_min``, values always clipped into
``[valid_min, valid_max]`` except out_of_range):

- ``spike``: one reading jumps by ``magnitude * w`` (params: magnitude, direction, value).
- ``drift``: the value moves linearly, reaching ``magnitude * w`` at the end (params: magnitude,
  direction, slope_per_s).
- ``flatline``: the metric is stuck at the value of its first affected reading (params: value).
- ``dropout``: the device publishes nothing (metric None, params: {}).
- ``noise``: gaussian noise of ``sigma`` added (params: sigma).
- ``out_of_range``: the value is set beyond the physical range (``valid_max + 0.1 * (valid_max -
  valid_min)`` or below ``valid_min``) -- the gateway REJECTS such a reading (reason ``out_of_range``, to
  the dead-letter topic); it is never clipped. Downstream stages therefore see a gap, and the truth file
  still lists it so gateway rejects can be scored too. With batched payloads the whole batch is rejected.

Randomness: each device has its own generator seeded from ``(seed, device_id)``, so the anomalies of a
device do not depend on how the fleet is split across worker processes. Random onsets follow a Poisson
process of ``rate_per_device_hour`` in sensor time; at most one anomaly is active per device at a time:
a scheduled anomaly replaces one that is still active (recorded as ended just before).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from iotp.profiles import MetricProfile, Profiles, shipped_profiles

KINDS = ("spike", "drift", "flatline", "dropout", "noise", "out_of_range")
DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "spike": 1.0,
    "drift": 1.0,
    "flatline": 1.0,
    "dropout": 1.0,
    "noise": 1.0,
    "out_of_range": 0.5,
}
# (min, max) duration in seconds of a random anomaly of each kind; 0 = one reading.
DURATION_S: dict[str, tuple[float, float]] = {
    "spike": (0, 0),
    "out_of_range": (0, 0),
    "drift": (120, 600),
    "flatline": (60, 300),
    "dropout": (30, 180),
    "noise": (30, 120),
}
TRUTH_KEYS = ("device_id", "device_type", "metric", "kind", "start_ms", "end_ms", "params")


@dataclass
class ScheduledAnomaly:
    """An anomaly at a fixed time, from a scenario file. ``device`` is a device id or an index into the
    fleet (resolved by the caller with :meth:`resolve`); ``metric`` None = chosen at random."""

    device: str | int
    kind: str
    at_s: float
    duration_s: float = 0.0
    metric: str | None = None
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown anomaly kind {self.kind!r}; expected one of {', '.join(KINDS)}")


@dataclass
class Anomaly:
    device_id: str
    device_type: str
    metric: str | None
    kind: str
    start_ms: int
    end_ms: int
    params: dict[str, Any]

    def to_truth(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_type": self.device_type,
            "metric": self.metric,
            "kind": self.kind,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "params": self.params,
        }


@dataclass
class _DeviceState:
    rng: random.Random
    last_ts: int | None = None
    active: Anomaly | None = None
    scheduled: list[tuple[int, ScheduledAnomaly]] = field(default_factory=list)  # (start_ms, spec), sorted


def _width(spec: MetricProfile) -> float:
    return max(spec.normal_max - spec.normal_min, 1e-6)


def _clip(value: float, spec: MetricProfile) -> float:
    return min(spec.valid_max, max(spec.valid_min, value))


class AnomalyInjector:
    def __init__(
        self,
        seed: int | None = None,
        rate_per_device_hour: float = 0.0,
        kinds: Mapping[str, float] | None = None,
        schedule: list[ScheduledAnomaly] | None = None,
        start_ms: int = 0,
        truth_file: str | Path | None = None,
        profiles: Profiles | None = None,
    ) -> None:
        self.seed = seed
        self.profiles = shipped_profiles() if profiles is None else profiles
        self.rate_per_device_hour = max(0.0, rate_per_device_hour)
        weights = dict(kinds or DEFAULT_KIND_WEIGHTS)
        unknown = set(weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown anomaly kinds {sorted(unknown)}; expected {', '.join(KINDS)}")
        self.kinds = [k for k in KINDS if weights.get(k, 0) > 0]
        self.weights = [weights[k] for k in self.kinds]
        self.start_ms = start_ms
        self.truth: list[dict[str, Any]] = []
        self.truth_file = Path(truth_file) if truth_file else None
        self._devices: dict[str, _DeviceState] = {}
        self._schedule: dict[str, list[tuple[int, ScheduledAnomaly]]] = {}
        for item in schedule or []:
            if not isinstance(item.device, str):
                raise ValueError("ScheduledAnomaly.device must be resolved to a device id first")
            self._schedule.setdefault(item.device, []).append((start_ms + int(item.at_s * 1000), item))
        for items in self._schedule.values():
            items.sort(key=lambda pair: pair[0])

    # ----------------------------------------------------------------- public
    def apply(self, device_id: str, device_type: str, ts_ms: int, metrics: dict[str, float]) -> dict[str, float] | None:
        state = self._state(device_id)
        active = state.active
        if active is not None and ts_ms > active.end_ms:
            self._finish(state, active.end_ms)
            active = None
        # scheduled onsets due now replace whatever is active
        while state.scheduled and state.scheduled[0][0] <= ts_ms:
            start_ms, spec = state.scheduled.pop(0)
            end_ms = start_ms + int(spec.duration_s * 1000)
            if ts_ms > end_ms and spec.kind not in ("spike", "out_of_range"):
                continue  # entirely in the past (e.g. before the first reading)
            if active is not None:
                self._finish(state, max(active.start_ms, ts_ms - 1))
            start = max(start_ms, ts_ms) if spec.kind in ("spike", "out_of_range") else start_ms
            active = self._new(
                state, device_id, device_type, spec.kind, start, max(end_ms, start), spec.metric, dict(spec.params)
            )
        if active is None and self.rate_per_device_hour > 0 and self.kinds and state.last_ts is not None:
            dt_h = max(0, ts_ms - state.last_ts) / 3_600_000
            if state.rng.random() < 1.0 - math.exp(-self.rate_per_device_hour * dt_h):
                kind = state.rng.choices(self.kinds, self.weights)[0]
                lo, hi = DURATION_S[kind]
                duration_ms = int(state.rng.uniform(lo, hi) * 1000)
                active = self._new(state, device_id, device_type, kind, ts_ms, ts_ms + duration_ms, None, {})
        state.last_ts = ts_ms
        if active is None or ts_ms < active.start_ms:
            return metrics
        return self._alter(state, active, ts_ms, metrics)

    def close(self, end_ms: int) -> list[dict[str, Any]]:
        """End every open anomaly at ``min(its end, end_ms)`` and record it; returns all the truth."""
        for state in self._devices.values():
            if state.active is not None:
                self._finish(state, min(state.active.end_ms, max(end_ms, state.active.start_ms)))
        return self.truth

    @property
    def active(self) -> list[Anomaly]:
        return [s.active for s in self._devices.values() if s.active is not None]

    # --------------------------------------------------------------- internal
    def _state(self, device_id: str) -> _DeviceState:
        state = self._devices.get(device_id)
        if state is None:
            state = self._devices[device_id] = _DeviceState(random.Random(f"{self.seed}:{device_id}"))
            state.scheduled = list(self._schedule.get(device_id, []))
        return state

    def _new(
        self,
        state: _DeviceState,
        device_id: str,
        device_type: str,
        kind: str,
        start_ms: int,
        end_ms: int,
        metric: str | None,
        params: dict[str, Any],
    ) -> Anomaly:
        profile = self.profiles.get(device_type)
        if profile is None:
            raise ValueError(f"device type {device_type!r} has no profile")
        catalogue = profile.metrics
        if kind == "dropout":
            metric = None
        elif metric is None:
            metric = state.rng.choice(sorted(catalogue))
        elif metric not in catalogue:
            raise ValueError(f"{device_type} has no metric {metric!r}")
        rng = state.rng
        if kind in ("spike", "drift"):
            params.setdefault(
                "magnitude", round(rng.uniform(3.0, 6.0) if kind == "spike" else rng.uniform(1.5, 3.0), 3)
            )
        elif kind == "noise":
            assert metric is not None
            params.setdefault("sigma", round(rng.uniform(0.3, 0.8) * _width(catalogue[metric]), 4))
        anomaly = Anomaly(device_id, device_type, metric, kind, start_ms, end_ms, params)
        state.active = anomaly
        return anomaly

    def _alter(self, state: _DeviceState, a: Anomaly, ts_ms: int, metrics: dict[str, float]) -> dict[str, float] | None:
        if a.kind == "dropout":
            return None
        assert a.metric is not None
        if a.metric not in metrics:
            return metrics
        spec = self.profiles[a.device_type].metrics[a.metric]
        value = metrics[a.metric]
        p = a.params
        if a.kind == "spike":
            if "direction" not in p:
                up = value + p["magnitude"] * _width(spec)
                p["direction"] = 1 if up <= spec.valid_max else -1
            new = _clip(value + p["direction"] * p["magnitude"] * _width(spec), spec)
            p.setdefault("value", round(new, 4))
        elif a.kind == "drift":
            if "direction" not in p:
                p["direction"] = 1 if value + p["magnitude"] * _width(spec) <= spec.valid_max else -1
            if "slope_per_s" not in p:
                span_s = max((a.end_ms - a.start_ms) / 1000, 1.0)
                p["slope_per_s"] = round(p["direction"] * p["magnitude"] * _width(spec) / span_s, 6)
            new = _clip(value + p["slope_per_s"] * (ts_ms - a.start_ms) / 1000, spec)
        elif a.kind == "flatline":
            p.setdefault("value", value)
            new = p["value"]
        elif a.kind == "noise":
            new = _clip(value + state.rng.gauss(0.0, p["sigma"]), spec)
        else:  # out_of_range
            if "value" not in p:
                span = spec.valid_max - spec.valid_min
                p["value"] = (
                    round(spec.valid_max + 0.1 * span, 4)
                    if spec.valid_max + 0.1 * span < 1e15
                    else round(spec.valid_min - 0.1 * span, 4)
                )
            new = p["value"]
        altered = dict(metrics)
        altered[a.metric] = round(new, 4)
        return altered

    def _finish(self, state: _DeviceState, end_ms: int) -> None:
        a = state.active
        state.active = None
        if a is None:
            return
        a.end_ms = max(a.start_ms, end_ms)
        record = a.to_truth()
        self.truth.append(record)
        if self.truth_file is not None:
            line = orjson.dumps(record) + b"\n"
            # O_APPEND + one write per line: several worker processes may share the file.
            fd = os.open(self.truth_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def load_truth(path: str | Path) -> list[dict[str, Any]]:
    """Read a ground-truth JSON Lines file written by the simulator."""
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
