"""Annotated dependencies: the running service and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import check_admin, check_user
from app.config import Settings
from app.corpora import CorpusStore
from app.errors import NotReady
from app.service import ModelService


async def get_service(request: Request) -> ModelService:
    # async: a plain def would cost every request a hop through the thread pool
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the service is starting; try again shortly")
    return service


async def get_corpora(request: Request) -> CorpusStore:
    return request.app.state.corpora


async def app_settings(request: Request) -> Settings:
    """The settings this app was created with (create_app)."""
    return request.app.state.settings


async def require_user(request: Request) -> None:
    check_user(request, request.app.state.settings)


async def require_admin(request: Request) -> None:
    check_admin(request, request.app.state.settings)


ServiceDep = Annotated[ModelService, Depends(get_service)]
CorporaDep = Annotated[CorpusStore, Depends(get_corpora)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
