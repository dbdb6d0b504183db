"""GET /health (liveness: the process answers) and GET /ready (readiness: completions can be served)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, not_ready
from app.api.routing import StrictJSONRoute
from app.api.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health(service: ServiceDep) -> HealthResponse:
    """Answers 200 from the moment the port opens, while the model is still loading too: the probe
    that says whether to restart the process (Docker's HEALTHCHECK, a Kubernetes livenessProbe)."""
    active = service.models.active_or_none
    return HealthResponse(
        status="ok",
        ready=service.ready,
        model=active.name if active else None,
        device=str(service.device),
        decode_dtype=str(active.decode_dtype).removeprefix("torch.") if active else None,
    )


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ErrorResponse, "description": "Not ready yet (or shutting down); see Retry-After."}},
    summary="Readiness",
)
async def ready(service: ServiceDep) -> ReadyResponse:
    """200 once a model is loaded and the decode workers run; 503 with `Retry-After` while the model
    loads (or the default model trains on a fresh store) and while shutting down: the probe that
    says whether to send traffic (a load balancer's check, a Kubernetes readinessProbe)."""
    if not service.ready:
        raise not_ready(service)
    active = service.models.active
    return ReadyResponse(
        status="ready",
        model=active.name,
        device=str(service.device),
        decode_dtype=str(active.decode_dtype).removeprefix("torch."),
    )
