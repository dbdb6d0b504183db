"""Waiting on an engine request from an endpoint: whole, or as merged text deltas for a stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request

from app.engine import GenerationRequest


class GenerationError(RuntimeError):
    pass


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_until_done(gen: GenerationRequest, request: Request) -> bool:
    """True once the completion is done; False if the caller hung up first (its generation stops)."""
    disconnected = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        while True:
            item = asyncio.ensure_future(gen.queue.get())
            await asyncio.wait({item, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                return False
            kind, payload = item.result()
            if kind == "done":
                return True
            if kind == "error":
                raise GenerationError(payload)
    finally:
        disconnected.cancel()
        gen.cancel()  # a no-op once finished


async def text_deltas(gen: GenerationRequest) -> AsyncIterator[dict[int, str]]:
    """New text per choice index, merging whatever piled up since the last read; ends when done.

    If the consumer stops (a client disconnected), the request leaves the batch.
    """
    try:
        while True:
            kind, payload = await gen.queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise GenerationError(payload)
            merged: dict[int, str] = {}
            while True:
                for index, text in payload:
                    merged[index] = merged.get(index, "") + text
                if gen.queue.empty() or gen.queue._queue[0][0] != "text":
                    break
                payload = gen.queue.get_nowait()[1]
            yield merged
    finally:
        gen.cancel()
