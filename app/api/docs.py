"""GET /docs (Swagger UI) and /redoc: the API's own documentation pages, with every asset served
by the service itself (from the fastapi-offline package), so they work without internet."""

from __future__ import annotations

import math
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from app.api import schemas as api_schemas
from app.config import Settings

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


ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
BODY_ERRORS = {
    "413": "The body is larger than the limit.",
    "415": "The body is not sent as application/json.",
}


def settings_bounds(settings: Settings) -> dict[tuple[str, str], dict[str, float]]:
    """Limits the settings put on request fields (checked in app/api/protocol.py and the routes):
    (model, field) -> maxLength for each string in the field, maxItems for each list, maximum for
    each number."""
    prompt, new, n, stop = settings.max_prefix_chars, settings.max_new_chars, settings.max_n, settings.max_stop_chars
    return {
        ("CompleteRequest", "prefix"): {"maxLength": prompt},
        ("CompleteRequest", "max_new_chars"): {"maximum": new},
        ("CompleteRequest", "n"): {"maximum": n},
        ("CompleteRequest", "stop"): {"maxLength": stop},
        ("OpenAICompletionRequest", "prompt"): {"maxLength": prompt, "maxItems": settings.max_batch_size},
        ("OpenAICompletionRequest", "max_tokens"): {"maximum": new},
        ("OpenAICompletionRequest", "n"): {"maximum": n},
        ("OpenAICompletionRequest", "stop"): {"maxLength": stop},
        ("ScoreRequest", "text"): {"maxLength": settings.max_score_chars},
        ("TrainRequest", "corpus"): {"maxLength": settings.max_corpus_chars},
        ("TrainRequest", "hidden_size"): {"maximum": settings.max_hidden_size},
        ("TrainRequest", "num_layers"): {"maximum": settings.max_num_layers},
        ("TrainRequest", "epochs"): {"maximum": settings.max_epochs},
        ("TrainRequest", "max_seconds"): {"maximum": settings.max_train_seconds},
        # a product cannot be stated: each of the two may be up to the square root of the bound
        ("TrainRequest", "batch_size"): {"maximum": window_bound(settings)},
        ("TrainRequest", "seq_len"): {"maximum": window_bound(settings)},
    }


def window_bound(settings: Settings) -> int:
    """batch_size and seq_len may each be up to this: their product stays within max_batch_chars."""
    return max(1, math.isqrt(settings.max_batch_chars))


BOUND_TYPES = {"maxLength": ("string",), "maxItems": ("array",), "maximum": ("integer", "number")}


def _bound(node: dict, keyword: str, value: float) -> None:
    """Puts keyword on each schema of its type in node (through anyOf and items), unless one is tighter."""
    if node.get("type") in BOUND_TYPES[keyword]:
        node[keyword] = min(value, node.get(keyword, value))
    for sub in [*node.get("anyOf", []), node.get("items")]:
        if isinstance(sub, dict):
            _bound(sub, keyword, value)


NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def _exact_numbers(node: object, exact: object) -> None:
    """FastAPI's OpenAPI model holds bounds as floats (2**63 - 1 becomes 2**63, 0 becomes 0.0): put back
    the numbers pydantic wrote."""
    if isinstance(node, dict) and isinstance(exact, dict):
        for key, value in exact.items():
            if key not in node:
                continue
            if key in NUMBER_KEYWORDS and isinstance(value, int) and not isinstance(value, bool):
                node[key] = value
            else:
                _exact_numbers(node[key], value)
    elif isinstance(node, list) and isinstance(exact, list) and len(node) == len(exact):
        for item, exact_item in zip(node, exact, strict=True):
            _exact_numbers(item, exact_item)


def install_openapi(app: FastAPI) -> None:
    """/openapi.json states what the server really answers: every error is the one envelope
    (ErrorResponse), including the 422 that FastAPI would otherwise document in its own shape; the
    413 and 415 every JSON body may get; the limits the settings put on fields; exact integer bounds."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for op in operations.values():
                    invalid = op.get("responses", {}).get("422")
                    if invalid is not None and "HTTPValidationError" in str(invalid):
                        op["responses"]["422"] = {
                            "description": "Invalid input: the message and `param` name the field at fault.",
                            "content": ERROR_REF,
                        }
                    if "application/json" in op.get("requestBody", {}).get("content", {}):
                        for status, description in BODY_ERRORS.items():
                            op["responses"].setdefault(status, {"description": description, "content": ERROR_REF})
            components = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            for name, component in components.items():
                model = getattr(api_schemas, name, None)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    _exact_numbers(component, model.model_json_schema(ref_template="#/components/schemas/{model}"))
            for (name, field), bounds in settings_bounds(app.state.settings).items():
                for keyword, value in bounds.items():
                    _bound(components[name]["properties"][field], keyword, value)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
