"""The one place errors become HTTP: each domain error's status, type and headers, in one JSON envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from app.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

# domain error -> (HTTP status, the envelope's `type`)
HTTP_STATUS: dict[type[ServiceError], tuple[int, str]] = {
    InvalidInput: (422, "invalid_request"),
    Unauthorized: (401, "unauthorized"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    TooLarge: (413, "too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    Overloaded: (429, "overloaded"),
    NotReady: (503, "not_ready"),
}

_STATUS_TYPES = {status: kind for status, kind in HTTP_STATUS.values()} | {405: "method_not_allowed"}


def envelope(
    status: int,
    type_: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    """Every error response: {"error": {"type", "message", "param", ...}}."""
    body = {"error": {"type": type_, "message": message, "param": param, **extra}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def error_response(exc: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    """A domain error as its HTTP response (Retry-After where the error says when to come back)."""
    status, kind = next((v for cls, v in HTTP_STATUS.items() if isinstance(exc, cls)), (400, "invalid_request"))
    headers = dict(headers or {})
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return envelope(status, kind, exc.message, exc.param, headers or None)


def _loc_to_param(loc: tuple) -> str | None:
    # drop the location kind and pydantic's names for validator wrappers ("function-after[...]")
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and "[" not in str(p)]
    return ".".join(parts) or None


def _describe(error: dict) -> dict:
    if error.get("type") == "json_invalid":  # not JSON at all: the body is at fault, say where and why
        reason = (error.get("ctx") or {}).get("error") or error.get("msg", "")
        return {"param": "body", "message": f"invalid JSON: {reason}", "type": "json_invalid"}
    message = error.get("msg", "invalid")
    if error.get("type") == "string_unicode":  # strict str: a \ud800 escape's lone surrogate
        message = "contains a lone surrogate (\\ud800-\\udfff), which is not a character"
    return {"param": _loc_to_param(tuple(error.get("loc", ()))), "message": message, "type": error.get("type")}


def _most_telling(details: list[dict]) -> dict:
    """The error to name first. A field of several types (a string or a list) gets an error from
    each: "should be a valid string" from the type the value is not says less than the other's
    ("List should have at most 1 item")."""
    field = (details[0]["param"] or "").split(".")[0]
    same_field = [d for d in details if (d["param"] or "").split(".")[0] == field]
    return next((d for d in same_field if not str(d["type"]).endswith("_type")), details[0])


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    return sorted(
        method
        for route in app.router.routes
        for method in getattr(route, "methods", None) or ()
        if route.matches({**scope, "method": method})[0] == Match.FULL
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [_describe(e) for e in exc.errors()]
        first = _most_telling(details) if details else {"param": None, "message": "invalid request"}
        where = first["param"] or "request body"
        message = f"{where}: {first['message']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
        return envelope(422, "invalid_request", message, first["param"], details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return envelope(
            exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail), headers=headers or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "internal_error", "internal server error")
