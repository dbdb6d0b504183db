"""GET /docs (Swagger UI), /redoc and / : the API's own documentation pages, with every asset served
by the service itself (from the fastapi-offline package), so they work without internet."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-dist and redoc, as released
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# validatorUrl: none, so Swagger UI never asks an online validator about the schema
SWAGGER_PARAMETERS = {"validatorUrl": None, "displayRequestDuration": True, "tryItOutEnabled": True}

router = APIRouter(include_in_schema=False)


def _assets(request: Request) -> str:
    return request.scope.get("root_path", "") + ASSETS_URL


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=request.app.title + " - API docs",
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        swagger_js_url=_assets(request) + "/swagger-ui-bundle.js",
        swagger_css_url=_assets(request) + "/swagger-ui.css",
        swagger_favicon_url=_assets(request) + "/favicon.png",
        swagger_ui_parameters=SWAGGER_PARAMETERS,
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=request.scope.get("root_path", "") + request.app.openapi_url,
        title=request.app.title + " - ReDoc",
        redoc_js_url=_assets(request) + "/redoc.standalone.js",
        redoc_favicon_url=_assets(request) + "/favicon.png",
        with_google_fonts=False,
    )


@router.get("/")
async def home(request: Request) -> RedirectResponse:
    """A person who opens the service in a browser lands on the API docs."""
    return RedirectResponse(request.scope.get("root_path", "") + "/docs", status_code=307)


def install_openapi(app: FastAPI) -> None:
    """/openapi.json states what the server really answers: every error is the one envelope
    (ErrorResponse), including the 422 that FastAPI would otherwise document in its own shape."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for op in operations.values():
                    invalid = op.get("responses", {}).get("422")
                    if invalid is not None and "HTTPValidationError" in str(invalid):
                        op["responses"]["422"] = {
                            "description": "Invalid input: the message and `param` name the field at fault.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                        }
            components = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
