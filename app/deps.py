"""Annotated dependencies: the running service and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings, get_settings
from app.errors import NotReady
from app.service import ModelService


async def get_service(request: Request) -> ModelService:
    # async: a plain def would cost every request a hop through the thread pool
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the service is starting; try again shortly")
    return service


ServiceDep = Annotated[ModelService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
