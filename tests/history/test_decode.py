"""history.decode.decode_aggregate: the row in the aggregates table's column order, and a clear reject
naming the field for every kind of bad record (pure logic)."""

from __future__ import annotations

import orjson
import pytest

from history.columns import AGGREGATE_FIELDS
from history.decode import Rejected, decode_aggregate
from iotp.schema import WindowAggregate

GOOD = {
    "v": 1,
    "device_id": "climate-00001",
    "device_type": "climate",
    "metric": "temperature",
    "window_s": 10,
    "start": 1_796_000_000_000,
    "end": 1_796_000_010_000,
    "count": 10,
    "min": 20,
    "max": 22.5,
    "mean": 21.25,
    "std": 0.5,
    "late": 1,
}


@pytest.mark.parametrize("late", [True, False])
def test_row_matches_the_model(late):
    record = dict(GOOD) if late else {k: v for k, v in GOOD.items() if k != "late"}
    model = WindowAggregate.model_validate(record)
    expected = tuple(getattr(model, f) for f in AGGREGATE_FIELDS)
    (row,) = decode_aggregate(orjson.dumps(record))
    assert row == expected
    assert [type(v) for v in row] == [type(v) for v in expected]  # min=20 stored as a float, as the model does


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"device_id": None}, "device_id"),
        ({"metric": 3}, "metric"),
        ({"window_s": "ten"}, "window_s"),
        ({"start": -1}, "start is not an integer"),
        ({"count": 1.5}, "count"),
        ({"mean": "high"}, "mean"),
        ({"v": 2}, "v"),
    ],
)
def test_bad_fields_are_rejected_with_the_field_named(change, message):
    record = {**GOOD, **change}
    with pytest.raises(Rejected, match=message):
        decode_aggregate(orjson.dumps(record))


def test_an_infinite_number_is_rejected():
    with pytest.raises(Rejected, match="max is not finite"):  # pydantic's JSON parser reads 1e400 as inf
        decode_aggregate(orjson.dumps(GOOD).replace(b"22.5", b"1e400"))


@pytest.mark.parametrize("missing", ["device_type", "end", "min"])
def test_missing_fields_are_rejected(missing):
    with pytest.raises(Rejected, match=missing):
        decode_aggregate(orjson.dumps({k: v for k, v in GOOD.items() if k != missing}))


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", None])
def test_not_an_aggregate_object(raw):
    with pytest.raises(Rejected, match="not a WindowAggregate"):
        decode_aggregate(raw)
