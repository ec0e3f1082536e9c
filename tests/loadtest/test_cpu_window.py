"""CPU per process over the publishing window only: the window arithmetic (pure), the report rows, and the
sampler's view of a real process tree (a publisher with a multiprocessing worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from rich.console import Console

from loadtest import probes
from loadtest.probes import (
    Series,
    WindowSampler,
    cpu_at,
    cpu_timeline,
    descendant_pids,
    window_cpu_pct,
    window_usage,
)
from loadtest.report import process_table
from loadtest.runner import StepResult, publishing_window
from tests.support.waiting import wait_for


def busy(start: float, end: float, pct: float, step: float = 0.5, base: float = 0.0) -> list[tuple[float, float]]:
    """Samples of a cumulative CPU counter for a process running at ``pct`` % of a core."""
    points, t = [], start
    while t <= end + 1e-9:
        points.append((t, base + (t - start) * pct / 100))
        t += step
    return points


def test_cpu_at_interpolates_and_clamps():
    points = [(10.0, 1.0), (12.0, 2.0)]
    assert cpu_at(points, 11.0) == pytest.approx(1.5)
    assert cpu_at(points, 5.0) == 1.0  # before the first sample
    assert cpu_at(points, 99.0) == 2.0  # ended: keeps its total
    assert cpu_at([], 1.0) == 0.0


def test_the_drain_after_the_window_does_not_count():
    # 50 % while publishing [100, 110], then 100 % for a 5 s drain: the window says 50 %, not the blend
    s = Series()
    for t, v in busy(100, 110, 50) + busy(110.5, 115, 100, base=5.5):
        s.add_cpu(t, v)
    assert window_usage({"stream-0": s}, 100, 110)["stream-0"]["cpu_pct"] == 50.0
    assert window_cpu_pct(s.cpu, 100, 115) == pytest.approx(66.7, abs=0.1)  # what averaging with the drain gave


def test_a_process_started_or_ended_inside_the_window_counts_for_its_share():
    born = Series()
    born.add_cpu(105.0, 0.0)  # its start time: the sampler's first point
    for t, v in busy(105.5, 110, 100, base=0.5):
        born.add_cpu(t, v)
    gone = Series()
    for t, v in busy(100, 108, 80):
        gone.add_cpu(t, v)  # no samples after 108: it exited
    usage = window_usage({"publisher-worker-1": born, "publisher-worker-2": gone}, 100, 110)
    assert usage["publisher-worker-1"]["cpu_pct"] == 50.0
    assert usage["publisher-worker-2"]["cpu_pct"] == 64.0


def test_cpu_timeline_shows_the_second_a_process_burst():
    # 20 % for 3 s, a 2 s burst at 100 %, then 20 % again: the timeline shows the burst where the average
    # over the window (52 %) does not
    s = Series()
    for t, v in busy(100, 103, 20) + busy(103.5, 105, 100, base=1.1) + busy(105.5, 108, 20, base=2.6):
        s.add_cpu(t, v)
    timeline = cpu_timeline({"api": s}, 100, 108)["api"]
    assert len(timeline) == 8
    assert timeline[:3] == [20.0, 20.0, 20.0]
    assert timeline[3:5] == [pytest.approx(100.0), pytest.approx(100.0)]
    assert timeline[6:] == [pytest.approx(20.0), pytest.approx(20.0)]


def test_counter_stays_monotonic_and_unrelated_processes_are_left_out():
    s = Series()
    s.add_cpu(1.0, 5.0)
    s.add_cpu(2.0, 3.0)  # a child reaped outside the tree took its time with it
    assert [v for _, v in s.cpu] == [5.0, 5.0]
    later = Series()
    later.add_cpu(200.0, 1.0)
    assert window_usage({"later": later}, 100, 110) == {}
    with pytest.raises(ValueError):
        window_cpu_pct(s.cpu, 5, 5)


def test_rss_is_the_peak_inside_the_window():
    s = Series(cpu=[(0.0, 0.0), (10.0, 1.0)], rss=[(1.0, 2**20), (5.0, 3 * 2**20), (20.0, 9 * 2**20)])
    assert window_usage({"api": s}, 0, 10)["api"]["rss_mb"] == 3.0


def test_publishing_window_ends_when_the_stats_were_written():
    assert publishing_window(1000.0, 20.0) == (980.0, 1000.0)
    with pytest.raises(ValueError):
        publishing_window(1000.0, 0.0)


def test_report_shows_each_process_and_the_total():
    step = StepResult(
        offered=1000,
        step_s=20,
        cpu_window_s=20.0,
        processes={
            "gateway-0": {"cpu_pct": 40.0, "rss_mb": 80.0},
            "publisher": {"cpu_pct": 2.0, "rss_mb": 60.0},
            "publisher-worker-1": {"cpu_pct": 30.0, "rss_mb": 70.0},
        },
        harness_cpu_pct=12.0,
    )
    console = Console(record=True, width=200)
    process_table(console, [step])
    text = console.export_text()
    for row in ("gateway-0", "publisher-worker-1", "30 / 70", "publishing window"):
        assert row in text
    rows = {line.strip("│ ").split(" ")[0]: line for line in text.splitlines() if line.startswith("│")}
    assert "72" in rows["all"]  # 40 + 2 + 30: the pipeline's processes, not the harness
    assert "12" in rows["load"]  # the load test's own process, on a row of its own


SPAWNING = """
import multiprocessing as mp, time
def burn(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=burn, args=(1.0,))
    p.start(); p.join()
"""


def usage_until_exit(sampler: WindowSampler, proc: subprocess.Popen) -> dict[str, dict[str, float]]:
    """Let the (started) sampler run until ``proc`` exits cleanly; usage per row over that time."""
    started = time.time()
    try:
        wait_for(lambda: proc.poll() is not None, timeout=60, message="publisher exits")
    finally:
        sampler.stop()
    assert proc.returncode == 0
    return sampler.usage(started, time.time())


def test_sampler_gives_the_publishers_worker_a_row_of_its_own(tmp_path):
    script = tmp_path / "publisher.py"
    script.write_text(SPAWNING)
    sampler = WindowSampler({}, interval=0.05).start()
    proc = subprocess.Popen([sys.executable, str(script)])
    sampler.watch_each("publisher", proc.pid)
    usage = usage_until_exit(sampler, proc)
    assert {"publisher", "publisher-worker-1"} <= set(usage)
    # the worker burned about a second of CPU inside the window; the parent only waited for it
    assert usage["publisher-worker-1"]["cpu_pct"] > usage["publisher"]["cpu_pct"]


def test_descendant_pids_walks_the_whole_tree_and_nothing_else():
    children = {1: [2, 3], 2: [4], 4: [5], 9: [10]}
    assert sorted(descendant_pids(children, 1)) == [2, 3, 4, 5]
    assert list(descendant_pids(children, 3)) == []
    assert list(descendant_pids(children, 9)) == [10]


def test_one_scan_of_the_process_table_per_sample_however_many_trees(monkeypatch):
    # psutil's children(recursive=True) reads all of /proc per call: ten roots sampled 4 times a second read
    # 40 process tables a second in the load test itself. Now one table per sample serves all its roots.
    scans = []

    class CountingTable(probes.ProcessTable):
        def __init__(self) -> None:
            scans.append(1)
            super().__init__()

    monkeypatch.setattr(probes, "ProcessTable", CountingTable)
    own = os.getpid()
    sampler = WindowSampler({f"root-{i}": own for i in range(10)}, interval=60)
    sampler.sample()
    sampler.sample()
    assert len(scans) == 2
    assert set(sampler.series) == {f"root-{i}" for i in range(10)}


def test_watch_one_counts_the_process_without_its_children(tmp_path):
    script = tmp_path / "publisher.py"
    script.write_text(SPAWNING)
    proc = subprocess.Popen([sys.executable, str(script)])
    sampler = WindowSampler({"tree": proc.pid}, interval=0.05)
    sampler.watch_one("alone", proc.pid)
    usage = usage_until_exit(sampler.start(), proc)
    # the worker's busy second counts for the tree (reaped into its parent), not for the parent alone
    assert usage["tree"]["cpu_pct"] > usage["alone"]["cpu_pct"] + 20
