"""The soak benchmark's judgements (pure): RSS flatness per process life, and lag stretches above a floor."""

from __future__ import annotations

from loadtest.soak import lag_stretches, rss_flatness


def rows(series: dict[str, list[tuple[int, float] | None]], step: float = 10.0) -> list[dict]:
    """Intervals every ``step`` s; a program's entry is (pid, rss) or None (restarting in that interval)."""
    n = max(len(v) for v in series.values())
    out = []
    for i in range(n):
        procs = {}
        for name, values in series.items():
            if i < len(values) and values[i] is not None:
                pid, rss = values[i]
                procs[name] = {"pid": pid, "rss_mb": rss, "cpu_pct": 1.0}
        out.append({"t": (i + 1) * step, "processes": procs})
    return out


def test_growth_after_warmup_fails_and_warmup_growth_is_ignored() -> None:
    leaking = [(1, 100 + 10 * i) for i in range(12)]  # +10 MB per interval all along
    warming = [(2, 50 + 40 * min(i, 3)) for i in range(12)]  # grows during warm-up (30 s), then flat
    result = rss_flatness(rows({"leaky": leaking, "warm": warming}), warmup_s=30, limit=0.10)
    assert result["leaky"]["flat"] is False
    assert result["leaky"]["worst_growth_pct"] > 10
    assert result["warm"]["flat"] is True
    assert result["warm"]["worst_growth_pct"] == 0.0


def test_restarted_process_is_judged_from_its_own_warmup() -> None:
    # first life flat at 200 MB; killed; the new process starts small and warms up to 200 MB, then flat.
    first = [(1, 200.0)] * 10
    second = [(2, 60.0), (2, 120.0), (2, 200.0)] + [(2, 200.0)] * 9
    result = rss_flatness(rows({"gw": [*first, None, *second]}), warmup_s=30, limit=0.10)
    assert result["gw"]["lives"] == 2
    assert [j["pid"] for j in result["gw"]["judged"]] == [1, 2]
    assert result["gw"]["flat"] is True  # comparing the new process's 60 MB start with its end would say +233 %


def test_short_life_is_not_judged() -> None:
    result = rss_flatness(rows({"api": [(1, 100.0)] * 5}), warmup_s=30, limit=0.10)
    assert result["api"]["judged"] == []
    assert result["api"]["flat"] is None


def test_lag_stretch_measures_the_longest_time_above_the_floor() -> None:
    values = [0, 500, 5000, 8000, 6000, 100, 0, 7000, 0]
    intervals = [{"t": 10.0 * (i + 1), "backlog": v} for i, v in enumerate(values)]
    result = lag_stretches(intervals, "backlog", floor=1000)
    assert result["peak"] == 8000
    assert result["peak_t"] == 40.0
    assert result["longest_above_floor_s"] == 20.0  # above from t=30 to t=50
