"""Pure logic of the load test: percentiles and the maximum sustainable rate."""

from __future__ import annotations

import orjson

from loadtest.probes import latency_split, latency_timeline
from loadtest.report import plot
from loadtest.runner import StepResult, backlog_s, max_sustainable, percentiles, to_json, verdict


def test_percentiles_of_known_values():
    values = [float(v) for v in range(1, 101)]  # 1..100
    p = percentiles(values)
    assert (p["p50"], p["p95"], p["p99"], p["max"], p["n"]) == (51.0, 96.0, 100.0, 100.0, 100)
    assert percentiles([]) == {}


def test_max_sustainable_is_the_highest_sustainable_step_not_the_last():
    steps = [
        StepResult(offered=1000, step_s=10, sustainable=True),
        StepResult(offered=5000, step_s=10, sustainable=True),
        StepResult(offered=10000, step_s=10, sustainable=False),
        StepResult(offered=7000, step_s=10, sustainable=True),
    ]
    assert max_sustainable(steps) == 7000
    assert max_sustainable([StepResult(offered=1000, step_s=10)]) is None


def test_json_report_carries_steps_and_verdict():
    data = orjson.loads(to_json([StepResult(offered=1000, step_s=10, sustainable=True, lost=0)], {"config": {}}))
    assert data["max_sustainable_rate"] == 1000
    assert data["steps"][0]["offered"] == 1000


def test_latency_timeline_buckets_by_sensor_time_and_shows_the_slow_second():
    start = 1_000_000
    # (sensor ts, gateway rx, latency): second 0: 100 readings at 100 ms, 20 ms of it before the gateway
    samples = [(start + 10 * i, start + 10 * i + 20, 100.0) for i in range(100)]
    # second 1: 10 slow readings, slow before the gateway already (700 of their 1000 ms)
    samples += [
        (start + 1000 + 10 * i, start + 1000 + 10 * i + (700 if i >= 90 else 20), 100.0 + (900.0 if i >= 90 else 0.0))
        for i in range(100)
    ]
    samples += [(start + 3500, start + 3510, 50.0)]  # second 3 (none in second 2)
    timeline = latency_timeline(samples, start)
    assert [b["s"] for b in timeline] == [0.0, 1.0, 3.0]
    assert [b["n"] for b in timeline] == [100, 100, 1]
    assert (timeline[0]["p99"], timeline[1]["p50"], timeline[1]["p99"], timeline[1]["max"]) == (
        100.0,
        100.0,
        1000.0,
        1000.0,
    )
    assert (timeline[0]["gw_p99"], timeline[1]["gw_p99"]) == (20.0, 700.0)
    assert timeline[2] == {"s": 3.0, "n": 1, "p50": 50.0, "p99": 50.0, "max": 50.0, "gw_p99": 10.0}


def test_latency_split_separates_the_time_before_the_gateway_from_the_rest():
    split = latency_split([(1000, 1030, 250.0), (2000, 2400, 500.0)])
    assert split == {"to_gateway": [30.0, 400.0], "after_gateway": [220.0, 100.0]}


def test_the_report_plots_a_step_with_its_latency_timeline(tmp_path):
    step = StepResult(offered=1000, step_s=2, redis_latency_ms={"p50": 100.0, "p99": 300.0})
    step.redis_latency_timeline = [{"s": 0.0, "n": 5, "p50": 100.0, "p99": 300.0, "max": 310.0}]
    plot([step], tmp_path / "lt.png", "test")
    assert (tmp_path / "lt.png").stat().st_size > 10_000


def _step(**kw) -> StepResult:
    base = {"offered": 10_000, "step_s": 20, "publish_rate": 9_999.0, "drained": True, "drain_s": 4.2}
    return StepResult(**(base | kw))


def test_a_pipeline_that_fell_behind_is_not_sustainable_even_if_the_drain_was_quick():
    # a real 10,000 msgs/s step (benchmarks/results/harness/ramp-old-1.json): 199,986 readings published
    # in 20 s, the stream worker had processed ~148,000 when publishing ended (7,215/s), then cleared the
    # rest in the 4.2 s drain with the machine to itself. The drain rule alone called it sustainable.
    backlog = backlog_s(published=199_986, processed=147_900, publish_rate=9_998.9)
    assert backlog == 5.21
    ok, notes = verdict(_step(backlog_s=backlog), 10_000, max_drain_s=5, max_backlog_s=2, drain_s=30)
    assert not ok
    assert notes == ["5.2s of input not yet processed when publishing ended"]


def test_a_backlog_in_front_of_the_gateway_counts_too():
    # a gateway that reads Mosquitto late: the stream stage processed everything the gateway forwarded
    # (MQTT in = processed, so a rule on those two would pass), but 20,000 of the 180,000 published readings
    # were still queued in Mosquitto. The backlog is measured from what was published.
    assert backlog_s(published=180_000, processed=160_000, publish_rate=9_000.0) == 2.22
    assert backlog_s(published=180_000, processed=178_000, publish_rate=9_000.0) == 0.22


def test_a_step_that_kept_pace_drained_and_lost_nothing_is_sustainable():
    backlog = backlog_s(published=179_999, processed=179_999, publish_rate=8_999.8)
    assert backlog == 0.0
    assert verdict(_step(offered=9_000, publish_rate=8_999.8, backlog_s=backlog), 9_000, 5, 2, 30) == (True, [])
    assert backlog_s(published=0, processed=0, publish_rate=0.0) == 0.0  # nothing published: no division by zero


def test_each_failed_rule_says_why():
    step = _step(publish_rate=9_000.0, drained=True, drain_s=9.0, lost=3)
    ok, notes = verdict(step, 10_000, 5, 2, 30)
    assert not ok
    assert notes == ["publisher reached 9000/s of 10000/s", "backlog took 9s to drain", "3 readings not stored"]
    ok, notes = verdict(_step(drained=False), 10_000, 5, 2, 30)
    assert (ok, notes) == (False, ["not drained after 30s"])
