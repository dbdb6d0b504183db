"""GET /health: cheap, public liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routing import StrictJSONRoute
from app.deps import ServiceDep
from app.schemas import HealthResponse

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/health", response_model=HealthResponse, summary="Liveness and the active model")
async def health(service: ServiceDep) -> HealthResponse:
    active = service.active
    return HealthResponse(
        status="ok",
        model=active.name,
        device=str(service.device),
        decode_dtype=str(active.decode_dtype).removeprefix("torch."),
    )
