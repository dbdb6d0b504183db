"""The route class every router uses: JSON bodies must be UTF-8 and may not repeat a key (422, not last-wins)."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute


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


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
