"""POST /v1/completions and GET /v1/models in OpenAI's shapes, so existing clients and tools work.

One token is one character: max_tokens counts characters and usage counts characters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Request, Response

from app.api import protocol
from app.api.deps import ReadyServiceDep, SettingsDep
from app.api.generation import event_stream, text_deltas, wait_until_done
from app.api.routing import StrictJSONRoute
from app.api.schemas import (
    ErrorResponse,
    OpenAIChoice,
    OpenAICompletion,
    OpenAICompletionRequest,
    OpenAIModel,
    OpenAIModelList,
    OpenAIUsage,
)
from app.engine import GenerationRequest
from app.errors import NotFound

router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=StrictJSONRoute)


def _usage(gen: GenerationRequest) -> OpenAIUsage:
    completion = sum(len(s.text) for s in gen.seqs)
    return OpenAIUsage(
        prompt_tokens=len(gen.prefix), completion_tokens=completion, total_tokens=len(gen.prefix) + completion
    )


@router.post(
    "/completions",
    response_model=OpenAICompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The completion, or with `stream` its events."},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    summary="OpenAI-compatible completions (one token = one character)",
)
async def completions(req: OpenAICompletionRequest, request: Request, service: ReadyServiceDep, settings: SettingsDep):
    active = service.models.active.name
    if req.model is not None and req.model != active:
        raise NotFound(f"model {req.model!r} is not being served; the active model is {active!r}", "model")
    gen = service.completions.submit(protocol.from_openai(req, settings))
    ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), gen.loaded.name

    def body(choices: list[OpenAIChoice], usage: OpenAIUsage | None = None) -> OpenAICompletion:
        return OpenAICompletion(id=ident, created=created, model=model, choices=choices, usage=usage)

    if req.stream:

        async def events() -> AsyncIterator[dict]:
            async for merged in text_deltas(gen):
                chunk = body([OpenAIChoice(index=i, text=t, finish_reason=None) for i, t in sorted(merged.items())])
                yield {"data": chunk.model_dump_json(exclude_none=False, exclude={"usage"})}
            finals = [OpenAIChoice(index=s.index, text="", finish_reason=s.finish_reason) for s in gen.seqs]
            yield {"data": body(finals, _usage(gen)).model_dump_json()}
            yield {"data": "[DONE]"}

        return event_stream(events())
    if not await wait_until_done(gen, request):
        return Response(status_code=499)
    return body(
        [OpenAIChoice(index=s.index, text=s.text, finish_reason=s.finish_reason) for s in gen.seqs], _usage(gen)
    )


@router.get(
    "/models",
    response_model=OpenAIModelList,
    responses={503: {"model": ErrorResponse}},
    summary="OpenAI-compatible model list (the model being served)",
)
def models(service: ReadyServiceDep) -> OpenAIModelList:
    loaded = service.models.active
    return OpenAIModelList(data=[OpenAIModel(id=loaded.name, created=_epoch(loaded.meta.get("created_at")))])


def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0
