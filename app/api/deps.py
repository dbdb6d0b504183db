"""Annotated dependencies: the running service (ready or not), the corpus store and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import check_admin, check_user
from app.config import Settings
from app.errors import NotReady
from app.service import Service
from app.service.corpora import CorpusStore


async def get_service(request: Request) -> Service:
    # async: a plain def would cost every request a hop through the thread pool
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the service is starting; try again shortly", retry_after=1)
    return service


async def get_ready_service(request: Request) -> Service:
    """The service, once it can serve completions; 503 with Retry-After until then (see /ready)."""
    service = await get_service(request)
    if not service.ready:
        raise not_ready(service)
    return service


def not_ready(service: Service) -> NotReady:
    if service.startup_error is not None:
        return NotReady(f"the service cannot serve: {service.startup_error}", retry_after=30)
    if service.stopping:
        return NotReady("the service is shutting down", retry_after=5)
    return NotReady("the model is still loading; try again shortly", retry_after=1)


async def get_corpora(request: Request) -> CorpusStore:
    return request.app.state.corpora


async def app_settings(request: Request) -> Settings:
    """The settings this app was created with (create_app)."""
    return request.app.state.settings


async def require_user(request: Request) -> None:
    check_user(request, request.app.state.settings)


async def require_admin(request: Request) -> None:
    check_admin(request, request.app.state.settings)


ServiceDep = Annotated[Service, Depends(get_service)]
ReadyServiceDep = Annotated[Service, Depends(get_ready_service)]
CorporaDep = Annotated[CorpusStore, Depends(get_corpora)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
