"""Pipeline health: per-stage counters, rates, lag and dead-letter counts."""

from __future__ import annotations

from fastapi import APIRouter, Request

from dashboard_api.models import PipelineHealth

router = APIRouter(prefix="/api", tags=["pipeline"])


@router.get(
    "/pipeline",
    response_model=PipelineHealth,
    summary="Per-stage counters and rates (from two samples of the stats hash), lag, dead letters",
)
async def pipeline_health(request: Request) -> PipelineHealth:
    sampler = request.app.state.sampler
    return sampler.health(request.app.state.hub.stats(), await sampler.read())
