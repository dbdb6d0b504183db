"""Waiting on an engine request from an endpoint: whole, or as merged text deltas for an event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse

from app.engine import Delta, Done, Failed, GenerationRequest, Message, TextDelta


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
            message = item.result()
            if isinstance(message, Done):
                return True
            if isinstance(message, Failed):
                raise GenerationError(message.message)
    finally:
        disconnected.cancel()
        gen.cancel()  # a no-op once finished


async def text_deltas(gen: GenerationRequest) -> AsyncIterator[dict[int, Delta]]:
    """New text (and its log-probabilities) per choice index, merging whatever piled up since the
    last read; ends when done. If the consumer stops (a client disconnected), the request leaves
    the batch."""
    held: Message | None = None  # a message read while merging that is not text: handled next
    try:
        while True:
            message = held if held is not None else await gen.queue.get()
            held = None
            if isinstance(message, Done):
                return
            if isinstance(message, Failed):
                raise GenerationError(message.message)
            merged: dict[int, Delta] = {}
            while isinstance(message, TextDelta):
                for delta in message.deltas:
                    merged[delta.index] = merge(merged.get(delta.index), delta)
                try:
                    message = gen.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            else:
                held = message
            yield merged
    finally:
        gen.cancel()


def merge(before: Delta | None, after: Delta) -> Delta:
    if before is None:
        return after
    logprobs = None if before.logprobs is None else [*before.logprobs, *(after.logprobs or [])]
    return Delta(after.index, before.text + after.text, logprobs)


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def event_stream(events: AsyncIterator[dict]) -> EventSourceResponse:
    """Server-Sent Events as every streaming route sends them: `data: ...` events, a ping every 15 s."""
    return EventSourceResponse(events, headers=STREAM_HEADERS, sep="\n", ping=15)
