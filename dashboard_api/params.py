"""Shared request parameters: ids, metric names and time ranges, with explicit 4xx messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import HTTPException, Path, Query, Request

from iotp.schema import DEVICE_ID_PATTERN, NAME_PATTERN

ID_PATTERN = DEVICE_ID_PATTERN
METRIC_PATTERN = TYPE_PATTERN = NAME_PATTERN
ALERT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@|/+=-]{0,199}$"

DeviceIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="device id")]
AlertIdPath = Annotated[str, Path(pattern=ALERT_ID_PATTERN, description="alert id")]
RangeName = Literal["15m", "1h", "6h", "24h", "7d", "30d"]
RANGES = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)


def time_range(
    request: Request,
    start: Annotated[datetime | None, Query(description="ISO 8601 with timezone; default end - range")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601 with timezone; default now")] = None,
    range_: Annotated[
        RangeName | None, Query(alias="range", description="shortcut for start = end - range (default 1h)")
    ] = None,
) -> TimeRange:
    """Resolve ``start``/``end``/``range`` into an aware UTC range; 422 on a bad or too long range."""
    if start is not None and range_ is not None:
        raise HTTPException(422, "give either start or range, not both")
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(422, f"{name} needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    end = (end or datetime.now(UTC)).astimezone(UTC)
    start = start.astimezone(UTC) if start else end - RANGES[range_ or "1h"]
    if start >= end:
        raise HTTPException(422, "start must be before end")
    max_days = request.app.state.settings.api_max_range_days
    if end - start > timedelta(days=max_days):
        raise HTTPException(422, f"time range longer than {max_days} days")
    if start.year < 2000 or end.year > 2200:
        raise HTTPException(422, "time range out of bounds")
    return TimeRange(start, end)


def to_ms(value: datetime | float | None) -> int | None:
    """Epoch ms from what a query returns (epoch ms, seconds-precision datetime, or None)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    return int(value)
