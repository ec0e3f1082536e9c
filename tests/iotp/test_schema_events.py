"""The typed dicts the stream jobs emit are the same contracts as the pydantic models of iotp.schema."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from iotp.schema import Alert, AlertEvent, WindowAggregate, WindowAggregateEvent
from stream_jobs.detectors import DeviceDetector, load_rules
from stream_jobs.windows import DeviceWindows

T0 = 1_700_000_000_000


@pytest.mark.parametrize("typed, model", [(WindowAggregateEvent, WindowAggregate), (AlertEvent, Alert)])
def test_typed_dict_has_the_model_fields(typed: type, model: type[BaseModel]) -> None:
    assert set(typing.get_type_hints(typed)) == set(model.model_fields)
    assert typed.__required_keys__ == frozenset(model.model_fields)


def test_window_aggregates_validate_as_the_model() -> None:
    windows = DeviceWindows("d1", "climate", [10], 0)
    for i in range(25):
        windows.add(T0 + i * 1000, {"temperature": 20.0 + i % 3})
    due = windows.due(None)
    assert due
    for event in due:
        assert set(event) == set(WindowAggregate.model_fields)
        assert WindowAggregate.model_validate(event).model_dump() == event


def test_alert_events_validate_as_the_model() -> None:
    det = DeviceDetector("c1", "climate", load_rules())
    events = []
    for i in range(20):
        ts = T0 + i * 1000
        events += det.observe(ts, ts, {"temperature": 95.0})  # far above the climate range
    events += det.check_silence(T0 + 3_600_000)
    assert {e["rule"] for e in events} >= {"threshold", "silence"}
    for event in events:
        assert set(event) == set(Alert.model_fields)
        assert Alert.model_validate(event).model_dump() == event
