"""Pure logic of the load test: percentiles and the maximum sustainable rate."""

from __future__ import annotations

import orjson

from loadtest.runner import StepResult, max_sustainable, percentiles, to_json


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
