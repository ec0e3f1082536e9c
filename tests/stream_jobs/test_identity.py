"""Reading identity and order in the stream engine (issue 11): reboots, devices without seq, backfill, and
snapshots of the seq-bitmask era. Pure logic, no Kafka or Redis."""

from __future__ import annotations

import orjson

from iotp.schema import NO_SEQ, reading_key
from stream_jobs.detectors import load_rules
from stream_jobs.engine import DEDUP_MEMORY, DUPLICATE, NEW, OUT_OF_ORDER, Effects, Engine

T0 = 1_700_000_000_000
RULES = load_rules()


def reading(ts: int, seq: int | None, value: float = 45.0, bf: bool = False) -> dict:
    r = {"id": "", "seq": seq, "ts": ts, "rx": ts, "metrics": {"humidity": value}}
    if seq is None:
        r["k"] = reading_key(None, r["metrics"])
    if bf:
        r["bf"] = True
    return r


def record(readings: list[dict], device: str = "c1") -> bytes:
    return orjson.dumps({"v": 1, "device_id": device, "device_type": "climate", "readings": readings})


def test_classify_reboot_is_new_and_redelivery_is_duplicate() -> None:
    engine = Engine([10], 5, RULES)
    engine.apply(0, 0, record([reading(T0 + i * 1000, i) for i in range(1, 101)]), T0, Effects())
    ds = engine.device(0, "c1")
    after = T0 + 200_000
    assert [ds.classify(after + i * 1000, i) for i in (1, 2, 3)] == [NEW, NEW, NEW]  # rebooted: seq 1.. again
    assert ds.classify(after + 1000, 1) == DUPLICATE  # the same reading redelivered
    assert ds.classify(T0 + 100 * 1000, 100) == DUPLICATE  # a pre-reboot reading redelivered
    assert ds.classify(after + 1500, 1) == OUT_OF_ORDER  # same seq, other time: another reading


def test_engine_counts_the_reboot_case_exactly() -> None:
    engine = Engine([10], 5, RULES)
    fx = Effects()
    engine.apply(0, 0, record([reading(T0 + i * 1000, i, 40.0) for i in range(1, 101)]), T0, fx)
    engine.apply(0, 1, record([reading(T0 + 200_000 + i * 1000, i, 50.0) for i in range(1, 51)]), T0, fx)
    c = engine.counters
    assert (c["stream.readings"], c["stream.duplicates"], c["stream.out_of_order"]) == (150, 0, 0)
    assert engine.device(0, "c1").newest == (T0 + 250_000, 50)


def test_device_without_seq() -> None:
    engine = Engine([10], 5, RULES)
    fx = Effects()
    same_ms = [reading(T0, None, 1.0), reading(T0, None, 2.0)]  # two readings in one millisecond
    engine.apply(0, 0, record([*same_ms, reading(T0 + 1000, None, 1.0)]), T0, fx)
    engine.apply(0, 1, record(same_ms), T0, fx)  # redelivered
    c = engine.counters
    assert (c["stream.readings"], c["stream.duplicates"], c["stream.invalid"]) == (3, 2, 0)


def test_memory_is_bounded_and_too_old_is_a_duplicate_unless_backfill() -> None:
    engine = Engine([10], 5, RULES)
    engine.apply(0, 0, record([reading(T0 + i, i) for i in range(1, 201)]), T0, Effects())
    ds = engine.device(0, "c1")
    assert len(ds.recent) == len(ds.seen) == DEDUP_MEMORY
    assert ds.floor == (T0 + 200 - DEDUP_MEMORY, 200 - DEDUP_MEMORY)
    assert ds.classify(T0 + 1, 1) == DUPLICATE  # too old to tell
    assert ds.classify(T0 + 2, 2, backfill=True) == OUT_OF_ORDER  # a backfilled reading is kept
    assert ds.classify(T0 + 2, 2, backfill=True) == DUPLICATE  # ... once


def test_backfill_is_counted_and_stays_out_of_windows_and_detectors() -> None:
    engine = Engine([10], 5, RULES)
    fx = Effects()
    live = T0 + 3_600_000
    engine.apply(0, 0, record([reading(live + i * 1000, i, 45.0) for i in range(1, 31)]), live, fx)
    # an hour-old upload with values that would alert (threshold) and fill a window of their own
    old = [reading(T0 + i * 1000, 1000 + i, 99.0, bf=True) for i in range(30)]
    fx2 = Effects()
    engine.apply(0, 1, record(old), live + 31_000, fx2)
    engine.tick(live + 120_000, {0}, fx2)
    c = engine.counters
    assert (c["stream.backfill"], c["stream.readings"], c["stream.duplicates"]) == (30, 60, 0)
    assert not [a for a in fx2.aggregates if a["start"] < live]  # no window from the backfill
    assert not [a for a in fx2.alerts if a["rule"] != "silence"]
    assert fx2.batches  # the latest-state writer sees them (its Lua keeps the newer state)
    engine.apply(0, 2, record(old[:5]), live + 32_000, Effects())  # redelivered backfill
    assert (c["stream.backfill"], c["stream.duplicates"]) == (30, 5)


def test_snapshot_round_trip_keeps_the_memory() -> None:
    engine = Engine([10], 5, RULES)
    rs = [reading(T0 + i * 1000, i) for i in range(1, 11)] + [reading(T0 + 20_000, None, 3.0)]
    engine.apply(0, 0, record(rs), T0, Effects())
    ds = engine.device(0, "c1")
    state = orjson.loads(orjson.dumps(ds.to_state()))
    engine2 = Engine([10], 5, RULES)
    engine2.load_partition(0, {b"__offset__": b"1", b"c1": orjson.dumps(state)})
    ds2 = engine2.device(0, "c1")
    assert (ds2.newest, ds2.floor, list(ds2.recent), ds2.seen) == (ds.newest, ds.floor, list(ds.recent), ds.seen)
    engine2.apply(0, 1, record(rs[:3]), T0, Effects())
    assert engine2.counters["stream.duplicates"] == 3


def test_a_snapshot_with_the_distance_encoded_memory_restores() -> None:
    """Snapshots written before the flat ``r`` memory carry ``m``: distances from the newest identity (a
    metrics-hash key as its decimal string)."""
    engine = Engine([10], 5, RULES)
    rs = [reading(T0 + i * 1000, i) for i in range(1, 11)] + [reading(T0 + 20_000, None, 3.0)]
    engine.apply(0, 0, record(rs), T0, Effects())
    ds = engine.device(0, "c1")
    state = ds.to_state()
    nts, nkey = ds.newest
    del state["r"]
    state["m"] = [x for ts, key in ds.recent for x in (nts - ts, str(key) if key >= NO_SEQ else nkey - key)]
    engine2 = Engine([10], 5, RULES)
    engine2.load_partition(0, {b"__offset__": b"1", b"c1": orjson.dumps(state)})
    ds2 = engine2.device(0, "c1")
    assert (ds2.newest, ds2.floor, list(ds2.recent), ds2.seen) == (ds.newest, ds.floor, list(ds.recent), ds.seen)


def test_an_old_seq_bitmask_snapshot_restores() -> None:
    """Redis snapshots written before this change carry ``seq``/``seen``: they load, readings up to the old
    newest (window watermark, seq) count as seen, later ones and a reboot are new."""
    engine = Engine([10], 5, RULES)
    engine.apply(0, 0, record([reading(T0 + i * 1000, i) for i in range(1, 6)]), T0, Effects())
    state = engine.device(0, "c1").to_state()
    for name in ("n", "f", "r"):
        del state[name]
    state.update(seq=5, seen=31)
    engine2 = Engine([10], 5, RULES)
    engine2.load_partition(0, {b"__offset__": b"1", b"c1": orjson.dumps(state)})
    ds = engine2.device(0, "c1")
    assert ds.classify(T0 + 5000, 5) == DUPLICATE
    assert ds.classify(T0 + 6000, 6) == NEW
    assert ds.classify(T0 + 7000, 1) == NEW  # rebooted
