"""GET /health: cheap, public liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness and the active model")
async def health(service: ServiceDep) -> HealthResponse:
    return HealthResponse(status="ok", model=service.active.name, device=str(service.device))
