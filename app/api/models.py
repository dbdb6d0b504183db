"""GET /models, POST /models/{name}/activate, DELETE /models/{name}: the stored models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.routing import StrictJSONRoute
from app.deps import ServiceDep, require_admin
from app.schemas import ErrorResponse, ModelsResponse

router = APIRouter(prefix="/models", tags=["models"], route_class=StrictJSONRoute)


@router.get("", response_model=ModelsResponse, summary="Stored models")
def list_models(service: ServiceDep) -> ModelsResponse:
    """Every stored model with its architecture, training settings and metrics; which is active."""
    return ModelsResponse(active=service.active.name, models=service.list_models())


@router.post(
    "/{name}/activate",
    dependencies=[Depends(require_admin)],
    response_model=ModelsResponse,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Serve a stored model",
)
def activate_model(name: str, service: ServiceDep) -> ModelsResponse:
    """Loads the model and swaps it in atomically: requests in flight finish on the previous one."""
    service.activate(name)
    return ModelsResponse(active=service.active.name, models=service.list_models())


@router.delete(
    "/{name}",
    dependencies=[Depends(require_admin)],
    status_code=204,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Delete a stored model",
)
def delete_model(name: str, service: ServiceDep) -> Response:
    """Deleting the active model (or one a training job is using) is refused with 409."""
    service.delete(name)
    return Response(status_code=204)
