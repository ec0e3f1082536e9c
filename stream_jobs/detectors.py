"""Anomaly detectors per device: pure Python, no Kafka, no clock of its own.

Rules (``rule`` field of :class:`iotp.schema.Alert`):

* ``threshold``   -- value outside the normal range of the device type (its device profile's
  ``normal_min``/``normal_max`` or ``threshold`` override, see ``iotp.profiles``; a rules file may
  override again); clears inside the range narrowed by a 2% hysteresis band.
* ``zscore``      -- ``|x - level| / sigma > z_open``: ``level`` is a time-based EWMA of the metric, ``sigma``
  the noise level estimated from successive differences (robust to slow trends and daily cycles). Both
  are updated with residuals clipped to 3 sigma, so an anomaly does not teach the baseline.
* ``drift``       -- a smoothed level (short EWMA) departs from the slow baseline (long EWMA) by more than
  ``drift_open`` sigma for ``drift_open_count`` readings.
* ``rate_of_change`` -- ``|dx/dt|`` above the metric's ``max_rate`` (only where the rules file sets one).
* ``flatline``    -- ``flatline_count`` identical consecutive readings (stuck sensor).
* ``silence``     -- no reading for ``max(silence_factor x max(observed interval, the profile's
  expected_interval_s), silence_min_s)``; resolves ("back online") with the next reading.

Every rule goes through the same :class:`Tracker` lifecycle: one open alert per device x rule x metric,
opened once, resolved after ``clear_count`` normal readings and at least ``min_open_s`` -- no storms.
Alert ids are deterministic (device, rule, metric, first anomalous reading's ``ts``), so an alert
re-emitted after a replay deduplicates downstream.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from iotp.profiles import MetricProfile, Profiles, expected_interval_ms, shipped_profiles
from iotp.schema import SCHEMA_VERSION, AlertEvent, AlertState, Severity

SEVERITY: dict[str, Severity] = {
    "threshold": "warning",
    "zscore": "warning",
    "drift": "warning",
    "rate_of_change": "info",
    "flatline": "warning",
    "silence": "critical",
}


@dataclass(frozen=True, slots=True)
class DetectorParams:
    warmup: int = 30
    tau_level_s: float = 20.0
    tau_drift_s: float = 10.0
    tau_baseline_s: float = 300.0
    tau_noise_s: float = 300.0
    z_open: float = 6.0
    z_clear: float = 3.0
    drift_open: float = 5.0
    drift_clear: float = 2.0
    drift_open_count: int = 3
    flatline_count: int = 6
    clear_count: int = 3
    min_open_s: float = 2.0
    silence_factor: float = 5.0
    silence_min_s: float = 3.0


@dataclass(frozen=True, slots=True)
class MetricRule:
    min: float | None = None
    max: float | None = None
    max_rate: float | None = None
    severity: Severity = "warning"
    zscore: bool = True
    drift: bool = True
    flatline: bool = True
    sigma_floor: float = 1e-6


@dataclass
class RuleSet:
    """The rules of every device type. Shared by all detectors of a worker: :meth:`use_profiles` swaps the
    per-metric rules and expected intervals in place, so a changed profile applies to the next reading."""

    params: DetectorParams = field(default_factory=DetectorParams)
    metrics: dict[tuple[str, str], MetricRule] = field(default_factory=dict)
    intervals_ms: dict[str, float] = field(default_factory=dict)  # device type -> expected interval
    overrides: dict = field(default_factory=dict)  # the rules file's ``thresholds`` (applied over profiles)

    def rule(self, device_type: str, metric: str) -> MetricRule:
        found = self.metrics.get((device_type, metric))
        if found is None:  # unknown type or metric: statistical rules only
            found = self.metrics[(device_type, metric)] = MetricRule()
        return found

    def expected_interval_ms(self, device_type: str) -> float:
        return self.intervals_ms.get(device_type, 0.0)

    def use_profiles(self, profiles: Profiles) -> None:
        self.metrics = metric_rules(profiles, self.overrides)
        self.intervals_ms = {t: expected_interval_ms(p) for t, p in profiles.items()}


def default_rules_path() -> Path:
    return Path(str(resources.files("stream_jobs") / "rules" / "rules.yaml"))


def _rule(o: dict, spec: MetricProfile | None) -> MetricRule:
    """A metric's rule: the rules-file override ``o`` over the profile's threshold over its normal range."""
    t = spec.threshold if spec is not None else None

    def pick(name: str, profile_value: Any, default: Any = None) -> Any:
        if name in o:
            return o[name]
        return profile_value if profile_value is not None else default

    lo = pick("min", t.min if t else None, spec.normal_min if spec else None)
    hi = pick("max", t.max if t else None, spec.normal_max if spec else None)
    floor = 1e-6 if lo is None or hi is None else max(1e-6, 1e-3 * (hi - lo))
    return MetricRule(
        min=lo,
        max=hi,
        max_rate=pick("max_rate", t.max_rate if t else None),
        severity=pick("severity", t.severity if t else None, "warning"),
        zscore=pick("zscore", t.zscore if t else None, True),
        drift=pick("drift", t.drift if t else None, True),
        flatline=pick("flatline", t.flatline if t else None, True),
        sigma_floor=pick("sigma_floor", t.sigma_floor if t else None, floor),
    )


def metric_rules(profiles: Profiles, overrides: dict | None = None) -> dict[tuple[str, str], MetricRule]:
    """Pure: the rule of every profiled metric, plus metrics only the rules file's ``thresholds`` name."""
    overrides = overrides or {}
    metrics: dict[tuple[str, str], MetricRule] = {}
    for device_type, profile in profiles.items():
        for metric, spec in profile.metrics.items():
            metrics[(device_type, metric)] = _rule((overrides.get(device_type) or {}).get(metric) or {}, spec)
    for device_type, specs in overrides.items():  # types/metrics no profile knows
        for metric, o in (specs or {}).items():
            if (device_type, metric) not in metrics:
                metrics[(device_type, metric)] = _rule(o or {}, None)
    return metrics


def load_rules(path: Path | str | None = None, profiles: Profiles | None = None, **param_overrides: Any) -> RuleSet:
    """Detector parameters from the rules YAML (default: the packaged ``stream_jobs/rules/rules.yaml``) and
    per-metric rules from the device ``profiles`` (default: the shipped ones), with the rules file's
    optional ``thresholds`` applied over them."""
    doc = yaml.safe_load(Path(path or default_rules_path()).read_text()) or {}
    known = {f.name for f in fields(DetectorParams)}
    given = {k: v for k, v in (doc.get("detectors") or {}).items() if k in known}
    unknown = set(doc.get("detectors") or {}) - known
    if unknown:
        raise ValueError(f"unknown detector parameters in rules file: {sorted(unknown)}")
    params = DetectorParams(**{**given, **param_overrides})
    rules = RuleSet(params, overrides=doc.get("thresholds") or {})
    rules.use_profiles(shipped_profiles() if profiles is None else profiles)
    return rules


def alert_id(device_id: str, rule: str, metric: str | None, first_seen: int) -> str:
    raw = f"{device_id}|{rule}|{metric or ''}|{first_seen}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


class Tracker:
    """Lifecycle of one device x rule x metric: pending -> open -> resolved, with hysteresis."""

    __slots__ = ("alert_id", "bad", "exp_max", "exp_min", "first", "good", "is_open", "last", "value")

    def __init__(self) -> None:
        self.is_open = False
        self.bad = 0
        self.good = 0
        self.first = 0
        self.last = 0
        self.value: float | None = None
        self.exp_min: float | None = None
        self.exp_max: float | None = None
        self.alert_id = ""

    def to_state(self) -> list:
        return [
            self.is_open,
            self.bad,
            self.good,
            self.first,
            self.last,
            self.value,
            self.exp_min,
            self.exp_max,
            self.alert_id,
        ]

    @classmethod
    def from_state(cls, state: list) -> Tracker:
        self = cls()
        (
            self.is_open,
            self.bad,
            self.good,
            self.first,
            self.last,
            self.value,
            self.exp_min,
            self.exp_max,
            self.alert_id,
        ) = state
        return self


class MetricStats:
    """What the detectors have learnt about one metric of one device (EWMA level, drift, noise, flatline).

    Snapshots store it as a dict of these names (:meth:`to_state`); :meth:`from_state` also reads the
    positional list that snapshots written before it hold in Redis (``FIELDS`` is that order)."""

    FIELDS = ("n", "level", "drift_level", "baseline", "noise_var", "prev_x", "prev_ts", "flat_run", "flat_first")
    __slots__ = FIELDS

    def __init__(self, x: float, ts: int) -> None:
        """The state after the first reading ``x`` at ``ts``."""
        self.n = 1
        self.level = self.drift_level = self.baseline = x
        self.noise_var = 0.0
        self.prev_x = x
        self.prev_ts = ts
        self.flat_run = 0
        self.flat_first = ts

    def to_state(self) -> dict[str, float]:
        # spelled out (not a loop over FIELDS with getattr): it runs for every metric of every snapshot entry
        return {
            "n": self.n,
            "level": self.level,
            "drift_level": self.drift_level,
            "baseline": self.baseline,
            "noise_var": self.noise_var,
            "prev_x": self.prev_x,
            "prev_ts": self.prev_ts,
            "flat_run": self.flat_run,
            "flat_first": self.flat_first,
        }

    @classmethod
    def from_state(cls, state: dict[str, float] | list[float]) -> MetricStats:
        values = state if isinstance(state, list) else [state[name] for name in cls.FIELDS]
        self = cls.__new__(cls)
        for name, value in zip(cls.FIELDS, values, strict=True):
            setattr(self, name, value)
        return self


class DeviceDetector:
    """All detectors of one device. Feed readings in sequence order with :meth:`observe`; call
    :meth:`check_silence` from a timer. Both return alert events (dicts shaped like ``Alert``)."""

    __slots__ = (
        "device_id",
        "device_type",
        "interval_ms",
        "last_rx",
        "last_ts",
        "params",
        "rules",
        "stats",
        "trackers",
    )

    def __init__(self, device_id: str, device_type: str, rules: RuleSet) -> None:
        self.device_id = device_id
        self.device_type = device_type
        self.rules = rules
        self.params = rules.params
        self.stats: dict[str, MetricStats] = {}
        self.trackers: dict[str, Tracker] = {}  # "rule|metric" -> Tracker
        self.last_ts = -1
        self.last_rx = -1
        self.interval_ms = 0.0

    # ---- alert lifecycle ---------------------------------------------------------------------------
    def _step(
        self,
        out: list[AlertEvent],
        key: str,
        rule: str,
        metric: str | None,
        ts: int,
        bad: bool,
        ok: bool,
        value: float | None,
        exp_min: float | None,
        exp_max: float | None,
        open_count: int = 1,
        severity: Severity | None = None,
        first: int | None = None,
    ) -> None:
        tr = self.trackers.get(key)
        if tr is None:
            if not bad:
                return
            tr = self.trackers[key] = Tracker()
        p = self.params
        if bad:
            if tr.bad == 0 and not tr.is_open:
                tr.first = ts if first is None else first
            tr.bad += 1
            tr.good = 0
            tr.last = ts
            tr.value, tr.exp_min, tr.exp_max = value, exp_min, exp_max
            if not tr.is_open and tr.bad >= open_count:
                tr.is_open = True
                tr.alert_id = alert_id(self.device_id, rule, metric, tr.first)
                out.append(self._event(tr, rule, metric, "open", severity))
        elif tr.is_open:
            if ok:
                tr.good += 1
                if tr.good >= p.clear_count and ts - tr.first >= p.min_open_s * 1000:
                    out.append(self._event(tr, rule, metric, "resolved", severity, resolved_at=ts))
                    del self.trackers[key]
            else:
                tr.good = 0
        else:
            del self.trackers[key]  # a pending anomaly that never opened

    def _event(
        self,
        tr: Tracker,
        rule: str,
        metric: str | None,
        state: AlertState,
        severity: Severity | None,
        resolved_at: int | None = None,
    ) -> AlertEvent:
        what = f"{metric} " if metric else ""
        return AlertEvent(
            v=SCHEMA_VERSION,
            alert_id=tr.alert_id,
            device_id=self.device_id,
            device_type=self.device_type,
            metric=metric,
            rule=rule,
            severity=severity or SEVERITY.get(rule, "warning"),
            state=state,
            value=tr.value,
            expected_min=tr.exp_min,
            expected_max=tr.exp_max,
            first_seen=tr.first,
            last_seen=tr.last,
            resolved_at=resolved_at,
            message=f"{rule} {what}{state}",
        )

    def open_count(self) -> int:
        return sum(1 for tr in self.trackers.values() if tr.is_open)

    # ---- readings ----------------------------------------------------------------------------------
    def observe(self, ts: int, rx: int, metrics: dict[str, float]) -> list[AlertEvent]:
        """One in-order reading (``ts`` event time, ``rx`` when the stream received it, epoch ms)."""
        out: list[AlertEvent] = []
        p = self.params
        if self.last_ts >= 0:
            gap = ts - self.last_ts
            if gap > 0:
                self.interval_ms = gap if self.interval_ms == 0 else 0.8 * self.interval_ms + 0.2 * gap
        silence = self.trackers.get("silence|")
        if silence is not None and silence.is_open:  # back online
            silence.good = p.clear_count
            out.append(self._event(silence, "silence", None, "resolved", None, resolved_at=ts))
            del self.trackers["silence|"]
        self.last_ts = max(ts, self.last_ts)
        self.last_rx = max(rx, self.last_rx)
        for metric, x in metrics.items():
            self._metric(out, metric, ts, x, self.rules.rule(self.device_type, metric), p)
        return out

    def _metric(
        self, out: list[AlertEvent], metric: str, ts: int, x: float, rule: MetricRule, p: DetectorParams
    ) -> None:
        keys = _KEYS.get(metric)
        if keys is None:
            keys = _KEYS[metric] = tuple(f"{r}|{metric}" for r in _METRIC_RULES)
        k_thr, k_flat, k_rate, k_z, k_drift = keys
        trackers = self.trackers
        st = self.stats.get(metric)
        if rule.min is not None or rule.max is not None:
            lo = rule.min if rule.min is not None else -math.inf
            hi = rule.max if rule.max is not None else math.inf
            bad = x < lo or x > hi
            if bad or k_thr in trackers:
                width = hi - lo
                band = 0.02 * width if math.isfinite(width) else 0.0
                severity = rule.severity
                if bad and math.isfinite(width) and (x < lo - 0.25 * width or x > hi + 0.25 * width):
                    severity = "critical"
                self._step(
                    out,
                    k_thr,
                    "threshold",
                    metric,
                    ts,
                    bad,
                    lo + band <= x <= hi - band,
                    x,
                    rule.min,
                    rule.max,
                    severity=severity,
                )
        if st is None:
            self.stats[metric] = MetricStats(x, ts)
            return
        n, level, dlevel, base, var = st.n, st.level, st.drift_level, st.baseline, st.noise_var
        prev_x, prev_ts, flat_run, flat_first = st.prev_x, st.prev_ts, st.flat_run, st.flat_first
        dt = (ts - prev_ts) / 1000.0
        if dt <= 0:
            return  # same or older timestamp: nothing to learn from
        sigma = math.sqrt(var)
        if sigma < rule.sigma_floor:
            sigma = rule.sigma_floor
        warm = n >= p.warmup
        # flatline
        if x == prev_x:
            if flat_run == 0:
                flat_first = prev_ts
            flat_run += 1
        else:
            flat_run = 0
        if rule.flatline:
            bad = flat_run + 1 >= p.flatline_count
            if bad or k_flat in trackers:
                # the alert starts at the first of the identical readings
                self._step(
                    out,
                    k_flat,
                    "flatline",
                    metric,
                    ts,
                    bad,
                    flat_run == 0,
                    x,
                    None,
                    None,
                    first=flat_first if bad else None,
                )
        # rate of change
        if rule.max_rate is not None:
            rate = abs(x - prev_x) / dt
            bad = rate > rule.max_rate
            if bad or k_rate in trackers:
                self._step(
                    out,
                    k_rate,
                    "rate_of_change",
                    metric,
                    ts,
                    bad,
                    rate <= rule.max_rate * 0.8,
                    x,
                    -rule.max_rate,
                    rule.max_rate,
                )
        if warm:
            # z-score against the EWMA level
            if rule.zscore:
                z = abs(x - level) / sigma
                bad = z > p.z_open
                if bad or k_z in trackers:
                    self._step(
                        out,
                        k_z,
                        "zscore",
                        metric,
                        ts,
                        bad,
                        z < p.z_clear,
                        x,
                        level - p.z_open * sigma,
                        level + p.z_open * sigma,
                    )
            # drift: smoothed level against slow baseline
            if rule.drift:
                d = abs(dlevel - base) / sigma
                bad = d > p.drift_open
                if bad or k_drift in trackers:
                    self._step(
                        out,
                        k_drift,
                        "drift",
                        metric,
                        ts,
                        bad,
                        d < p.drift_clear,
                        dlevel,
                        base - p.drift_open * sigma,
                        base + p.drift_open * sigma,
                        open_count=p.drift_open_count,
                    )
        # learn, with residuals clipped to 3 sigma once warm (an anomaly must not become the baseline)
        clip = 3.0 * sigma if n >= 3 else math.inf
        alphas = _ALPHAS.get((dt, p))
        if alphas is None:
            if len(_ALPHAS) > 4096:
                _ALPHAS.clear()
            alphas = _ALPHAS[(dt, p)] = tuple(
                1.0 - math.exp(-dt / tau) for tau in (p.tau_level_s, p.tau_drift_s, p.tau_baseline_s, p.tau_noise_s)
            )
        a_level, a_drift, a_base, a_noise = alphas
        if n < p.warmup:
            a_noise = 1.0 / n
        level += a_level * _clip(x - level, clip)
        dlevel += a_drift * _clip(x - dlevel, clip)
        base += a_base * _clip(x - base, clip)
        diff = x - prev_x
        if diff != 0.0:  # a stuck sensor says nothing about the noise
            diff = _clip(diff, 2.0 * clip)
            var += a_noise * (diff * diff / 2.0 - var)
        st.n, st.level, st.drift_level, st.baseline, st.noise_var = n + 1, level, dlevel, base, var
        st.prev_x, st.prev_ts, st.flat_run, st.flat_first = x, ts, flat_run, flat_first

    # ---- silence -----------------------------------------------------------------------------------
    def silence_after_ms(self) -> float:
        p = self.params
        interval = max(self.interval_ms, self.rules.expected_interval_ms(self.device_type))
        return max(p.silence_factor * interval, p.silence_min_s * 1000.0)

    def check_silence(self, now_ms: int) -> list[AlertEvent]:
        """Open a ``silence`` alert if nothing arrived for too long (``now_ms`` on the ``rx`` clock).

        The stream job calls it only for partitions that are caught up: otherwise a backlog would look
        like silence."""
        if self.last_rx < 0 or "silence|" in self.trackers:
            return []
        silent_for = now_ms - self.last_rx
        if silent_for <= self.silence_after_ms():
            return []
        out: list[AlertEvent] = []
        self._step(out, "silence|", "silence", None, self.last_ts, True, False, silent_for / 1000.0, None, None)
        return out

    # ---- snapshot ----------------------------------------------------------------------------------
    def to_state(self) -> dict:
        return {
            "s": {m: st.to_state() for m, st in self.stats.items()},
            "t": {k: tr.to_state() for k, tr in self.trackers.items()},
            "ts": self.last_ts,
            "rx": self.last_rx,
            "iv": self.interval_ms,
        }

    @classmethod
    def from_state(cls, device_id: str, device_type: str, rules: RuleSet, state: dict) -> DeviceDetector:
        self = cls(device_id, device_type, rules)
        self.stats = {m: MetricStats.from_state(v) for m, v in state.get("s", {}).items()}
        self.trackers = {k: Tracker.from_state(v) for k, v in state.get("t", {}).items()}
        self.last_ts = state.get("ts", -1)
        self.last_rx = state.get("rx", -1)
        self.interval_ms = state.get("iv", 0.0)
        return self


_METRIC_RULES = ("threshold", "flatline", "rate_of_change", "zscore", "drift")
_KEYS: dict[str, tuple[str, ...]] = {}
_ALPHAS: dict[tuple[float, DetectorParams], tuple[float, ...]] = {}


def _clip(value: float, limit: float) -> float:
    return limit if value > limit else -limit if value < -limit else value
