"""iotp.stats: one definition of each stats-hash field, and the stages count under those names."""

from __future__ import annotations

import orjson

from iotp import stats
from stream_jobs.detectors import load_rules
from stream_jobs.engine import Effects, Engine

T0 = 1_700_000_000_000


def test_names_are_unique_and_under_their_stage() -> None:
    pairs = [(k, v) for k, v in vars(stats).items() if k.isupper() and isinstance(v, str) and not v.endswith(".")]
    assert len({v for _, v in pairs}) == len(pairs)
    for constant, value in pairs:
        stage, name = constant.split("_", 1)
        assert value == f"{stage.lower()}.{name.lower()}"
    assert all(name.startswith(stats.STREAM) for name in stats.STREAM_COUNTERS)
    assert len(set(stats.STREAM_COUNTERS)) == len(stats.STREAM_COUNTERS)


def test_the_engine_counts_under_the_defined_names() -> None:
    engine = Engine([10], 5, load_rules())

    def record(seqs: list[int]) -> bytes:
        readings = [
            {"id": f"c1:{s}", "seq": s, "ts": T0 + s * 1000, "rx": T0 + s * 1000, "metrics": {"t": 1.0}} for s in seqs
        ]
        return orjson.dumps({"v": 1, "device_id": "c1", "device_type": "climate", "readings": readings})

    fx = Effects()
    engine.apply(0, 0, record([1, 2, 5]), T0, fx)
    engine.apply(0, 1, record([2, 3]), T0, fx)  # a duplicate and an out-of-order reading
    engine.apply(0, 2, b"not json", T0, fx)
    engine.apply(0, 1, record([9]), T0, fx)  # replayed offset
    counted = {name for name, value in engine.counters.items() if value}
    assert counted >= {stats.STREAM_READINGS, stats.STREAM_DUPLICATES, stats.STREAM_OUT_OF_ORDER, stats.STREAM_INVALID}
    assert counted <= set(stats.STREAM_COUNTERS)
