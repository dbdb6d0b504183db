"""The service's errors and the one JSON envelope every error response uses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a client caused or can act on; `status` is the HTTP status it maps to."""

    status = 400
    type = "invalid_request"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers


class InvalidInput(ServiceError):
    status = 422


class NotFound(ServiceError):
    status = 404
    type = "not_found"


class Conflict(ServiceError):
    status = 409
    type = "conflict"


class TooLarge(ServiceError):
    status = 413
    type = "too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    type = "unsupported_media_type"


class Overloaded(ServiceError):
    status = 429
    type = "overloaded"


class NotReady(ServiceError):
    status = 503
    type = "not_ready"


def envelope(status: int, type_: str, message: str, param: str | None = None, headers=None, **extra) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "param": param, **extra}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _loc_to_param(loc: tuple) -> str | None:
    # drop the location kind and pydantic's names for validator wrappers ("function-after[...]")
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and "[" not in str(p)]
    return ".".join(parts) or None


def _describe(error: dict) -> dict:
    if error.get("type") == "json_invalid":  # not JSON at all: the body is at fault, say where and why
        reason = (error.get("ctx") or {}).get("error") or error.get("msg", "")
        return {"param": "body", "message": f"invalid JSON: {reason}", "type": "json_invalid"}
    return {
        "param": _loc_to_param(tuple(error.get("loc", ()))),
        "message": error.get("msg", "invalid"),
        "type": error.get("type"),
    }


_STATUS_TYPES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return envelope(exc.status, exc.type, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [_describe(e) for e in errors]
        first = details[0] if details else {"param": None, "message": "invalid request"}
        where = first["param"] or "request body"
        message = f"{where}: {first['message']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
        return envelope(422, "invalid_request", message, first["param"], details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return envelope(
            exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "internal_error", "internal server error")
