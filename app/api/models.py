"""GET /models: the stored models and which one is active."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep
from app.schemas import ModelsResponse

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelsResponse, summary="Stored models")
def list_models(service: ServiceDep) -> ModelsResponse:
    return ModelsResponse(active=service.active.name, models=service.list_models())
