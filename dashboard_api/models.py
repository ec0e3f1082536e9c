"""Response models of the REST API."""

from __future__ import annotations

from pydantic import BaseModel


class DeviceState(BaseModel):
    device_id: str
    device_type: str
    seq: int
    ts: int
    last_seen: int
    status: str
    metrics: dict[str, float]


class DeviceList(BaseModel):
    total: int
    items: list[DeviceState]


class HistoryPoint(BaseModel):
    ts: int
    value: float


class HistorySeries(BaseModel):
    device_id: str
    metric: str
    start: int
    end: int
    points: list[HistoryPoint]


def parse_device_hash(raw: dict[bytes, bytes]) -> DeviceState:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return DeviceState(
        device_id=fields["device_id"], device_type=fields["device_type"], seq=int(fields["seq"]),
        ts=int(fields["ts"]), last_seen=int(fields.get("last_seen", fields["ts"])),
        status=fields.get("status", "online"),
        metrics={k[2:]: float(v) for k, v in fields.items() if k.startswith("m:")},
    )
