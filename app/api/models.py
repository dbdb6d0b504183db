"""GET /models, GET /models/{name}, POST /models/{name}/activate, DELETE /models/{name}: the stored models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from app.api.deps import ServiceDep, require_admin
from app.api.routing import StrictJSONRoute
from app.api.schemas import MODEL_NAME_REGEX, MODEL_NAME_RULE, ErrorResponse, ModelInfo, ModelsResponse

router = APIRouter(prefix="/models", tags=["models"], route_class=StrictJSONRoute)

# The schema states the name rule; the store checks it, with a 422 that says what a name may be.
Name = Annotated[
    str, Path(description=MODEL_NAME_RULE, json_schema_extra={"pattern": MODEL_NAME_REGEX, "maxLength": 64})
]


def _models(service) -> ModelsResponse:
    active = service.models.active_or_none
    return ModelsResponse(active=active.name if active else None, models=service.models.summaries())


@router.get("", response_model=ModelsResponse, summary="Stored models")
def list_models(service: ServiceDep) -> ModelsResponse:
    """A short summary of every stored model (architecture, size, validation bits/char) and which
    is active; `GET /models/{name}` has one model's settings and metrics in full."""
    return _models(service)


@router.get(
    "/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="One stored model in full",
)
def model_detail(name: Name, service: ServiceDep) -> ModelInfo:
    """Architecture, training settings, metrics. The training text itself is never returned: its
    SHA-256 and counts describe it."""
    return ModelInfo(**service.models.detail(name))


@router.post(
    "/{name}/activate",
    dependencies=[Depends(require_admin)],
    response_model=ModelsResponse,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Serve a stored model",
)
def activate_model(name: Name, service: ServiceDep) -> ModelsResponse:
    """Loads the model and swaps it in atomically: requests in flight finish on the previous one."""
    service.models.activate(name)
    return _models(service)


@router.delete(
    "/{name}",
    dependencies=[Depends(require_admin)],
    status_code=204,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Delete a stored model",
)
def delete_model(name: Name, service: ServiceDep) -> Response:
    """Deleting the active model (or one a training job is using) is refused with 409."""
    service.models.delete(name, in_use=service.jobs.user_of)
    return Response(status_code=204)
