"""Request and response models of the REST API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from iotp.schema import Alert

DeviceStatus = Literal["online", "offline"]


class DeviceState(BaseModel):
    device_id: str
    device_type: str
    seq: int | None = Field(description="the newest reading's seq (null: the device sends none)")
    ts: int = Field(description="sensor time of the newest reading, epoch ms")
    last_seen: int = Field(description="when the pipeline last processed a reading, epoch ms")
    status: DeviceStatus = Field(
        description="stored status; 'offline' also when silent longer than the offline threshold"
    )
    open_alerts: int = 0
    metrics: dict[str, float]


class DeviceList(BaseModel):
    total: int = Field(description="devices matching the filters")
    limit: int
    offset: int
    items: list[DeviceState]


class HistoryPoint(BaseModel):
    ts: int = Field(description="epoch ms (bucket start for downsampled series)")
    value: float | None = Field(description="the reading, or the bucket mean (null: empty bucket)")
    min: float | None = None
    max: float | None = None
    count: int | None = None


class HistorySeries(BaseModel):
    device_id: str
    metric: str
    start: int
    end: int
    resolution: Literal["raw", "1m", "1h"]
    points: list[HistoryPoint]


class FleetStat(BaseModel):
    device_type: str
    metric: str
    count: int
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None


class FleetStats(BaseModel):
    start: int
    end: int
    items: list[FleetStat]


class TopDevice(BaseModel):
    model_config = {"extra": "allow"}

    device_id: str
    device_type: str
    score: float


class TopDevices(BaseModel):
    start: int
    end: int
    by: Literal["alerts", "deviation"]
    items: list[TopDevice]


class TypeSummary(BaseModel):
    total: int = 0
    online: int = 0
    offline: int = 0
    alerting: int = 0


class FleetSummary(BaseModel):
    ts: int
    total: int
    online: int
    offline: int
    alerting: int = Field(description="devices with at least one open alert")
    open_alerts: int
    unacked_alerts: int
    by_type: dict[str, TypeSummary]


class Ack(BaseModel):
    by: str
    at: int = Field(description="epoch ms")
    note: str = ""


class AckRequest(BaseModel):
    by: str = Field("dashboard", min_length=1, max_length=64)
    note: str = Field("", max_length=500)


class AlertOut(Alert):
    ack: Ack | None = None


class AlertList(BaseModel):
    total: int
    items: list[AlertOut]


class AckResult(BaseModel):
    alert_id: str
    ack: Ack
    created: bool = Field(description="false when the alert had been acknowledged before")


class StageHealth(BaseModel):
    stage: str
    counters: dict[str, float] = Field(description="cumulative counters")
    rates: dict[str, float] = Field(description="per second, over the API's sampling window")
    lag: float | None = Field(None, description="records behind the high watermark")
    updated_ms: int | None = None
    age_s: float | None = Field(None, description="seconds since the stage last reported")


class WebSocketHealth(BaseModel):
    clients: int
    messages: int
    sent: int
    dropped: int
    coalesced: int
    per_client: list[dict]


class PipelineHealth(BaseModel):
    ts: int
    window_s: float = Field(description="time between the two samples the rates come from")
    stages: list[StageHealth]
    deadletter: dict[str, float] = Field(description="records sent to dead-letter topics, per source")
    websocket: WebSocketHealth


def _num(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_device_hash(
    raw: dict[bytes, bytes], now_ms: int | None = None, offline_after_ms: int | None = None
) -> DeviceState:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    last_seen = int(fields.get("last_seen", fields["ts"]))
    status = fields.get("status", "online")
    if status not in ("online", "offline"):
        status = "online"
    if now_ms is not None and offline_after_ms is not None and now_ms - last_seen > offline_after_ms:
        status = "offline"
    return DeviceState(
        device_id=fields["device_id"],
        device_type=fields["device_type"],
        seq=int(fields["seq"]) if fields.get("seq") else None,
        ts=int(fields["ts"]),
        last_seen=last_seen,
        status=status,
        open_alerts=int(fields.get("open_alerts", 0) or 0),
        metrics={k[2:]: float(v) for k, v in fields.items() if k.startswith("m:")},
    )
