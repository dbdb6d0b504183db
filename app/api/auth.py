"""API keys (`Authorization: Bearer <key>`, compared in constant time); the admin key guards training."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from app.config import Settings
from app.errors import Unauthorized


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def tenant(request: Request) -> str:
    """Who sent the request, as far as caches must keep callers apart: a digest of its API key."""
    presented = _presented(request)
    return hashlib.sha256(presented.encode()).hexdigest()[:16] if presented else ""


def check_user(request: Request, settings: Settings) -> None:
    """With CHARRNN_API_KEY set, every protected route needs it (the admin key is accepted too)."""
    if settings.api_key is None:
        return
    presented = _presented(request)
    keys = [settings.api_key.get_secret_value()]
    if settings.admin_api_key is not None:
        keys.append(settings.admin_api_key.get_secret_value())
    if not any(_matches(presented, k) for k in keys):
        raise _unauthorized(presented, "an API key")


def check_admin(request: Request, settings: Settings) -> None:
    """With CHARRNN_ADMIN_API_KEY set, training and model management need that key; the plain
    key is not enough. Without it, they need the plain key (if one is set)."""
    if settings.admin_api_key is None:
        check_user(request, settings)
        return
    presented = _presented(request)
    if not _matches(presented, settings.admin_api_key.get_secret_value()):
        raise _unauthorized(presented, "the admin API key")


def _unauthorized(presented: str | None, what: str) -> Unauthorized:
    message = f"this route needs {what}: Authorization: Bearer <key>" if presented is None else f"wrong key for {what}"
    return Unauthorized(message, "authorization")  # app.api.errors adds WWW-Authenticate: Bearer
