"""Reusable parts of the soak benchmark (``benchmarks/soak.py``): a publisher with exact per-device accounting,
a process watcher that follows restarts by program name, a chaos killer, and the end-of-run checks.

- :class:`Publisher` runs the real simulator publisher (``simulator.publisher.run_publisher``, QoS 1) in
  child processes on a fleet whose first sequence number it chooses, so it knows each device's last
  published reading exactly. With every message acknowledged (``unconfirmed_messages == 0``), the confirmed
  readings of a device are exactly ``seq0 + 1 .. last_seq``.
- :class:`ProgramWatcher` samples CPU/RSS per supervisord program (``loadtest.probes.ProcessSampler``) and
  drops a program from an interval in which its pid changed, so a restart never shows as a dip.
- :class:`Killer` sends SIGKILL to one random RUNNING program and records when supervisord restarted it.
- :func:`rss_flatness` and :func:`lag_stretches` turn the samples into the pass/fail numbers.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import random
import signal
import threading
import time
from dataclasses import dataclass, field

from infra.supervisor import Supervisor
from iotp.schema import now_ms
from iotp.settings import Settings
from loadtest.probes import ProcessSampler

# ------------------------------------------------------------------------------------------------ publisher


def _publisher_main(
    settings_json: str,
    prefix: str,
    devices: int,
    index: int,
    parts: int,
    rate: float,
    duration: float,
    seq0: int,
    out: mp.Queue,
) -> None:
    """One publisher process: its share of the fleet at its share of the rate, QoS 1, no anomalies."""
    from simulator.fleet import build_fleet
    from simulator.publisher import PublishOptions, run_publisher

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = Settings.model_validate_json(settings_json)
    fleet = build_fleet(devices, seed=1, mix={"power": 1.0}, prefix=prefix, seq0=seq0)[index::parts]
    try:
        stats = run_publisher(
            settings,
            fleet,
            rate * len(fleet) / devices,
            duration=duration,
            options=PublishOptions(qos=1, client_id=f"{prefix}pub{index}"),
            on_tick=lambda s: out.put(("tick", index, {"confirmed": s.confirmed, "published": s.published})),
            stop=stop,
            tick_s=1.0,
        )
        out.put(("done", index, stats.to_dict(), {d.device_id: d.seq for d in fleet}))
    except Exception as exc:  # reported to the parent, which fails the run
        out.put(("error", index, f"{type(exc).__name__}: {exc}"))


@dataclass
class PublishResult:
    seq0: int
    stats: dict  # summed over the publisher processes (simulator PublishStats fields)
    last_seq: dict[str, int]  # device id -> sequence number of its last published reading
    errors: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """True when every published reading was acknowledged, so confirmed = published, reading by reading."""
        return not self.errors and self.stats.get("unconfirmed_messages", 0) == 0 and self.stats.get("errors", 0) == 0


class Publisher:
    """``parts`` child processes publishing ``devices`` power meters at ``rate`` readings/s for ``duration`` s."""

    def __init__(
        self, settings: Settings, prefix: str, devices: int, rate: float, duration: float, parts: int = 1
    ) -> None:
        self.seq0 = now_ms()
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.parts = parts
        self.confirmed: dict[int, int] = {}
        self.published: dict[int, int] = {}
        self._done: dict[int, tuple[dict, dict]] = {}
        self._errors: list[str] = []
        self.procs = [
            ctx.Process(
                target=_publisher_main,
                name=f"soak-publisher-{i}",
                daemon=True,
                args=(settings.model_dump_json(), prefix, devices, i, parts, rate, duration, self.seq0, self.out),
            )
            for i in range(parts)
        ]
        for p in self.procs:
            p.start()

    def poll(self) -> int:
        """Drain progress messages; the readings acknowledged so far (all processes)."""
        while True:
            try:
                msg = self.out.get_nowait()
            except queue_mod.Empty:
                break
            kind, index = msg[0], msg[1]
            if kind == "tick":
                self.confirmed[index] = msg[2]["confirmed"]
                self.published[index] = msg[2]["published"]
            elif kind == "done":
                self._done[index] = (msg[2], msg[3])
                self.confirmed[index] = msg[2]["confirmed"]
                self.published[index] = msg[2]["published"]
            else:
                self._errors.append(f"publisher {index}: {msg[2]}")
                self._done[index] = ({}, {})
        return sum(self.confirmed.values())

    @property
    def finished(self) -> bool:
        self.poll()
        return len(self._done) == self.parts or not any(p.is_alive() for p in self.procs)

    def result(self, timeout: float) -> PublishResult:
        """Wait (bounded) for every process's summary; the publisher waits up to 60 s for its PUBACKs."""
        deadline = time.monotonic() + timeout
        while len(self._done) < self.parts and time.monotonic() < deadline:
            self.poll()
            if len(self._done) < self.parts and not any(p.is_alive() for p in self.procs):
                time.sleep(0.5)
                self.poll()
                break
            time.sleep(0.2)
        errors = list(self._errors)
        missing = [i for i in range(self.parts) if i not in self._done]
        errors += [f"publisher {i} returned no summary" for i in missing]
        stats: dict = {}
        last_seq: dict[str, int] = {}
        for part, seqs in self._done.values():
            for key, value in part.items():
                if key in ("elapsed", "behind_s"):
                    stats[key] = max(stats.get(key, 0.0), value)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    stats[key] = stats.get(key, 0) + value
            last_seq.update(seqs)
        return PublishResult(self.seq0, stats, last_seq, errors)

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            p.join(70)  # it flushes and waits for PUBACKs (up to 60 s) before it exits
            if p.is_alive():
                p.kill()
                p.join(5)


# ------------------------------------------------------------------------------------------------ processes


def running_pids(supervisor: Supervisor) -> dict[str, int]:
    """Program name -> pid of every RUNNING program."""
    return {p["name"]: p["pid"] for p in supervisor.processes() if p["statename"] == "RUNNING" and p["pid"]}


class ProgramWatcher:
    """CPU and RSS per program over one interval; a program whose pid changed in the interval is left out
    (it restarted), and its new process is followed from the next interval on."""

    def __init__(self, supervisor: Supervisor, names: list[str]) -> None:
        self.supervisor = supervisor
        self.names = names
        self._start()

    def _start(self) -> None:
        pids = running_pids(self.supervisor)
        self.pids = {n: pids[n] for n in self.names if n in pids}
        self.sampler = ProcessSampler(self.pids)

    def sample(self) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
        """(per program ``cpu_pct``/``rss_mb``/``pid``, current pids); then starts the next interval."""
        now = running_pids(self.supervisor)
        values = self.sampler.sample()
        out = {}
        for name, pid in self.pids.items():
            if now.get(name) == pid and name in values:
                out[name] = {**values[name], "pid": pid}
        self._start()
        return out, now


@dataclass
class Kill:
    t: float  # seconds since the soak started
    program: str
    pid: int
    restarted_after_s: float | None = None
    new_pid: int | None = None
    state_after: str = ""


class Killer:
    """SIGKILL one random RUNNING program of ``targets``; follow it until supervisord has it RUNNING again."""

    def __init__(self, supervisor: Supervisor, targets: list[str], rng: random.Random) -> None:
        self.supervisor = supervisor
        self.targets = targets
        self.rng = rng
        self.kills: list[Kill] = []
        self._pending: list[tuple[Kill, float]] = []
        self._pids: dict[str, int] = {}
        self._first_seen: dict[int, float] = {}  # pid -> when it was first seen RUNNING
        self.unexpected: list[dict] = []  # a process that changed without a kill of ours (a crash)

    def watch(self, t: float) -> None:
        """Note every pid change that no kill of ours explains: crashes and crash loops."""
        now = running_pids(self.supervisor)
        killed = {k.pid for k in self.kills}
        for name, pid in now.items():
            old = self._pids.get(name)
            if old is not None and old != pid and old not in killed:
                self.unexpected.append({"t": round(t, 1), "program": name, "old_pid": old, "new_pid": pid})
            self._pids[name] = pid

    def kill_one(self, t: float) -> Kill | None:
        pids = running_pids(self.supervisor)
        candidates = [n for n in self.targets if n in pids]
        if not candidates:
            return None
        name = self.rng.choice(candidates)
        pid = pids[name]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        kill = Kill(t=round(t, 1), program=name, pid=pid)
        self.kills.append(kill)
        self._pending.append((kill, time.monotonic()))
        return kill

    def follow(self, give_up_s: float = 120.0, stable_s: float = 10.0) -> None:
        """Record restarts: the program is back when a new process has stayed RUNNING for ``stable_s`` (a
        process that dies again at once, e.g. on an import error, is not back). A program that supervisord
        gave up on (FATAL) is started again once."""
        if not self._pending:
            return
        infos = {p["name"]: p for p in self.supervisor.processes()}
        still = []
        for kill, at in self._pending:
            info = infos.get(kill.program, {})
            state = info.get("statename", "")
            pid = info.get("pid") or 0
            if state == "RUNNING" and pid and pid != kill.pid:
                self._first_seen.setdefault(pid, time.monotonic())
            up_s = time.monotonic() - self._first_seen.get(pid, time.monotonic())
            if state == "RUNNING" and pid and pid != kill.pid and up_s >= stable_s:
                kill.restarted_after_s = round(self._first_seen[pid] - at, 1)
                kill.new_pid = pid
                kill.state_after = state
            elif time.monotonic() - at > give_up_s:
                kill.state_after = state or "unknown"
            else:
                if state == "FATAL" and not kill.state_after:
                    kill.state_after = "FATAL (started again by the soak)"
                    with contextlib.suppress(Exception):
                        self.supervisor.start(kill.program)
                still.append((kill, at))
        self._pending = still


# ------------------------------------------------------------------------------------------------ analysis


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def rss_flatness(intervals: list[dict], warmup_s: float, limit: float, window: int = 3) -> dict[str, dict]:
    """Per program: RSS at the start and the end of each process's life (a restart starts a new life),
    each the median of ``window`` samples, the start taken after ``warmup_s`` of that life.

    A life needs at least ``2 * window`` samples after its warm-up to be judged. The program is flat when no
    judged life grew by more than ``limit`` (0.10 = 10 %)."""
    lives: dict[str, list[dict]] = {}
    for row in intervals:
        for name, p in row["processes"].items():
            runs = lives.setdefault(name, [])
            if not runs or runs[-1]["pid"] != p["pid"]:
                runs.append({"pid": p["pid"], "born": row["t"], "samples": []})
            runs[-1]["samples"].append((row["t"], p["rss_mb"]))
    out = {}
    for name, runs in lives.items():
        judged = []
        for run in runs:
            settled = [(t, v) for t, v in run["samples"] if t - run["born"] >= warmup_s]
            if len(settled) < 2 * window:
                continue
            first = _median([v for _, v in settled[:window]])
            last = _median([v for _, v in settled[-window:]])
            judged.append(
                {
                    "pid": run["pid"],
                    "from_t": settled[0][0],
                    "to_t": settled[-1][0],
                    "first_mb": round(first, 1),
                    "last_mb": round(last, 1),
                    "growth_pct": round(100 * (last / first - 1), 1) if first else 0.0,
                }
            )
        worst = max((j["growth_pct"] for j in judged), default=None)
        out[name] = {
            "lives": len(runs),
            "judged": judged,
            "worst_growth_pct": worst,
            "flat": None if worst is None else worst <= 100 * limit,
        }
    return out


def lag_stretches(intervals: list[dict], key: str, floor: float) -> dict:
    """Peak of ``key`` and when, and the longest stretch (s) during which it stayed above ``floor``."""
    peak, peak_t, longest, above_since = 0.0, None, 0.0, None
    for row in intervals:
        value = row.get(key)
        if value is None:
            continue
        if value > peak:
            peak, peak_t = value, row["t"]
        if value > floor:
            above_since = row["t"] if above_since is None else above_since
            longest = max(longest, row["t"] - above_since)
        else:
            above_since = None
    return {"peak": peak, "peak_t": peak_t, "longest_above_floor_s": round(longest, 1), "floor": floor}
