"""Partition-mode records in the engine (pure logic): many device batches in one record give exactly the
state and effects of the same batches as device-keyed records, and a redelivered partition record is
skipped whole. The real-broker comparison is in test_partition_mode.py."""

from __future__ import annotations

import orjson

from iotp.kafka import partition_for
from iotp.schema import encode_batch, encode_partition_batch
from stream_jobs.detectors import load_rules
from stream_jobs.engine import Effects, Engine
from tests.stream_jobs.support import noise

T0 = 1_700_000_000_000
RULES = load_rules()
DEVICES = [f"c{i}" for i in range(12)]


def chunks() -> list[dict[str, bytes]]:
    """Per 'linger window': device id -> its device batch (10 readings at 1 s), a spike on c0."""
    out = []
    for chunk in range(9):
        window = {}
        for d, device in enumerate(DEVICES):
            values = noise(90, seed=d)
            if device == "c0":
                values[60:63] = [60.0, 61.0, 60.5]
            rows = [
                {
                    "id": f"{device}:{i}",
                    "seq": i,
                    "ts": T0 + i * 1000,
                    "rx": T0 + i * 1000,
                    "metrics": {"humidity": values[i - 1]},
                }
                for i in range(chunk * 10 + 1, chunk * 10 + 11)
            ]
            window[device] = encode_batch(device, "climate", rows)
        out.append(window)
    return out


def run_device_mode() -> tuple[Engine, Effects]:
    engine, fx = Engine([10, 60], 5, RULES), Effects()
    offsets: dict[int, int] = {}
    for window in chunks():
        for device, raw in window.items():
            p = partition_for(device.encode(), 4)
            engine.apply(p, offsets.setdefault(p, 0), raw, T0, fx)
            offsets[p] += 1
    return engine, fx


def run_partition_mode() -> tuple[Engine, Effects, list[tuple[int, int, bytes]]]:
    engine, fx = Engine([10, 60], 5, RULES), Effects()
    offsets: dict[int, int] = {}
    records = []
    for window in chunks():
        groups: dict[int, list[bytes]] = {}
        for device, raw in window.items():
            groups.setdefault(partition_for(device.encode(), 4), []).append(raw)
        for p, encoded in groups.items():
            records.append((p, offsets.setdefault(p, 0), encode_partition_batch(encoded)))
            offsets[p] += 1
    for p, offset, raw in records:
        engine.apply(p, offset, raw, T0, fx)
    return engine, fx, records


def test_partition_records_give_the_state_and_effects_of_device_records() -> None:
    a, fx_a = run_device_mode()
    b, fx_b, _ = run_partition_mode()
    key = orjson.dumps
    assert sorted(map(key, fx_a.aggregates)) == sorted(map(key, fx_b.aggregates))
    assert fx_a.aggregates and any(x["rule"] == "zscore" for x in fx_a.alerts)
    assert sorted(map(key, fx_a.alerts)) == sorted(map(key, fx_b.alerts))
    assert sorted(map(key, fx_a.batches)) == sorted(map(key, fx_b.batches))
    assert {p: sorted(d) for p, d in fx_a.dirty.items()} == {p: sorted(d) for p, d in fx_b.dirty.items()}
    assert set(a.partitions) == set(b.partitions)
    for p, ps in a.partitions.items():
        assert {d: ds.to_state() for d, ds in ps.devices.items()} == {
            d: ds.to_state() for d, ds in b.partitions[p].devices.items()
        }
    readings = sum(len(orjson.loads(raw)["readings"]) for w in chunks() for raw in w.values())
    assert a.counters["stream.readings"] == b.counters["stream.readings"] == readings
    # pub/sub: every partition record is published once, as received
    assert len(fx_b.published) == b.counters["stream.records"] < a.counters["stream.records"]


def test_a_redelivered_partition_record_is_skipped_whole_and_duplicates_are_not_republished() -> None:
    b, _, records = run_partition_mode()
    p, offset, raw = records[-1]
    fx = Effects()
    assert b.apply(p, offset, raw, T0, fx) is False  # below next_offset: a replay
    assert not fx.batches and not fx.published
    b.reset_offset(p)  # offsets forgotten (another topic incarnation): now identities dedup it
    fx = Effects()
    value = orjson.loads(raw)
    fresh_row = {"id": "x", "seq": 1000, "ts": T0 + 1_000_000, "rx": T0, "metrics": {"humidity": 45.0}}
    value["batches"].append(orjson.loads(encode_batch(value["batches"][0]["device_id"], "climate", [fresh_row])))
    assert b.apply(p, offset, orjson.dumps(value), T0, fx) is True
    assert len(fx.batches) == 1  # only the device batch with a new reading
    [published] = fx.published
    assert [x["readings"] for x in orjson.loads(published)["batches"]] == [[fresh_row]]
