"""The route class every router uses: JSON bodies must be UTF-8 and may not repeat a key (422, not last-wins)."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.errors import UnsupportedMediaType


class DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(f"the key {key!r} appears more than once")
        seen[key] = value
    return seen


class StrictJSONRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            try:  # JSON travels as UTF-8 (RFC 8259); FastAPI turns a decode error into a 422 naming it
                self._json = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"the body is not UTF-8 (byte {exc.start})", "", 0) from None
            except DuplicateKey as exc:
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        takes_json = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            if takes_json and not is_json(request.headers.get("content-type", "")):
                given = request.headers.get("content-type")
                raise UnsupportedMediaType(
                    "the body must be JSON, sent with the header Content-Type: application/json"
                    + (f" (this request said {given!r})" if given else " (this request sent no Content-Type)"),
                    "content-type",
                )
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
