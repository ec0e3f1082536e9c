"""Unit tests (no Kafka, no Redis): the snapshot's mark (offset + fingerprint), forgetting an offset of
another topic incarnation, and silence held while the pipeline (not the device) is behind or down."""

from __future__ import annotations

import orjson

from iotp.kafka_marks import Mark, fingerprint
from stream_jobs.engine import Effects, Engine
from stream_jobs.redis_state import RedisWriter
from tests.stream_jobs.test_detectors import RULES, T0, _record


def _snapshot(engine: Engine, partition: int) -> dict[bytes, bytes]:
    """What RedisWriter stores for the partition (offset fields + every device state)."""
    ps = engine.partitions[partition]
    snap = {k.encode(): str(v).encode() for k, v in RedisWriter._offset_fields(engine, partition).items()}
    snap.update({d.encode(): orjson.dumps(ds.to_state()) for d, ds in ps.devices.items()})
    return snap


def test_snapshot_mark_is_offset_and_fingerprint_of_the_last_record() -> None:
    engine = Engine([10], 5, RULES)
    raw = _record("c1", [3])
    engine.apply(0, 6, _record("c1", [1, 2]), T0 + 1, Effects())
    engine.apply(0, 7, raw, T0 + 2, Effects())
    snap = _snapshot(engine, 0)
    assert Mark.decode(snap[b"__mark__"]) == Mark(8, fingerprint(T0 + 2, raw))
    loaded = Engine([10], 5, RULES).load_partition(0, snap)
    assert loaded.mark() == Mark(8, fingerprint(T0 + 2, raw))  # the same mark before any record is applied
    legacy = Engine([10], 5, RULES).load_partition(0, {b"__offset__": b"8"})
    assert legacy.mark() == Mark(8, "")  # an older snapshot: no fingerprint, so no check accepts it


def test_reset_offset_keeps_devices_and_skips_nothing_new() -> None:
    engine = Engine([10], 5, RULES)
    engine.apply(0, 40, _record("c1", [1, 2, 3]), T0, Effects())
    restored = Engine([10], 5, RULES)
    restored.load_partition(0, _snapshot(engine, 0))
    fx = Effects()
    restored.reset_offset(0, fx)
    assert fx.offsets == {0: -1} and restored.counters["stream.reset_discarded"] == 1
    # the new log numbers from 0 again: a new record there is applied, a re-read reading is a duplicate
    assert restored.apply(0, 0, _record("c1", [3, 4]), T0, fx) is True
    c = restored.counters
    assert (c["stream.replay_skipped"], c["stream.readings"], c["stream.duplicates"]) == (0, 1, 1)
    assert RedisWriter._offset_fields(restored, 0)["__offset__"] == 1


def test_silence_is_held_while_the_pipeline_is_not_live_and_the_deadline_moves() -> None:
    engine = Engine([10], 5, RULES)
    fx = Effects()
    engine.apply(0, 0, _record("c1", [1]), T0, fx, now_ms=T0)
    after = engine.device(0, "c1").detector.silence_after_ms()
    # live but quiet for a while, then the gateways stop: held (caught up, but not live)
    engine.tick(T0 + 1000, {0}, Effects())
    for t in range(2000, 120_000, 1000):
        fx = Effects()
        engine.tick(T0 + t, {0}, fx, live=set())
        assert not fx.alerts and not fx.offline
    assert engine.held() == 1
    # live again: the device had been silent 1 s of live time, so the alert comes only `after` later
    resumed = T0 + 120_000
    fx = Effects()
    engine.tick(resumed, {0}, fx)
    assert engine.held() == 0 and not fx.alerts and "c1" in fx.dirty[0]
    fx = Effects()
    engine.tick(resumed + int(after) - 2000, {0}, fx)
    assert not fx.alerts
    fx = Effects()
    engine.tick(resumed + int(after) + 1000, {0}, fx)
    assert [a["rule"] for a in fx.alerts] == ["silence"] and fx.offline == ["c1"]


def test_a_loaded_partition_is_held_from_its_last_reading_until_caught_up() -> None:
    engine = Engine([10], 5, RULES)
    engine.apply(0, 0, _record("c1", [1]), T0, Effects(), now_ms=T0)
    restored = Engine([10], 5, RULES)
    restored.load_partition(0, _snapshot(engine, 0))
    assert restored.held() == 1  # the worker was down: that time is not the device's silence
    fx = Effects()
    restored.tick(T0 + 600_000, set(), fx)  # ten minutes later, still catching up
    restored.tick(T0 + 600_500, {0}, fx)  # caught up
    assert not fx.alerts and restored.device(0, "c1").detector.last_rx == T0 + 600_500
