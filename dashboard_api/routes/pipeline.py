"""Pipeline health: per-stage counters, rates, lag and dead-letter counts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from dashboard_api.deps import HistoryDep, HubDep, SamplerDep
from dashboard_api.models import PipelineHealth
from dashboard_api.params import ID_PATTERN
from history import queries

router = APIRouter(prefix="/api", tags=["pipeline"])


@router.get(
    "/pipeline",
    response_model=PipelineHealth,
    summary="Per-stage counters and rates (from two samples of the stats hash), lag, dead letters",
)
async def pipeline_health(sampler: SamplerDep, hub: HubDep) -> PipelineHealth:
    return sampler.health(hub.stats(), await sampler.read())


class IngestCheck(BaseModel):
    """What the raw history table holds for one device-id prefix (the load test's tagged fleet)."""

    device_prefix: str
    readings: int
    rows: int
    duplicate_rows: int
    devices: int
    missing_in_sequence: int
    latency_ms: dict[str, float]


@router.get(
    "/pipeline/ingest-check",
    response_model=IngestCheck,
    summary="Stored readings, duplicates, gaps and sensor -> ClickHouse latency for a device-id prefix",
)
async def ingest_check(
    history: HistoryDep,
    device_prefix: Annotated[
        str,
        Query(pattern=ID_PATTERN, min_length=3, description="device ids starting with this (at least 3 characters)"),
    ],
) -> IngestCheck:
    result = await history.run(queries.ingest_check, device_prefix)
    return IngestCheck(device_prefix=device_prefix, **result)
