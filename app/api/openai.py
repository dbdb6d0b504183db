"""POST /v1/completions and GET /v1/models in OpenAI's shapes, so existing clients and tools work.

One token is one character: max_tokens counts characters and usage counts characters.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from app.api.complete import STREAM_HEADERS
from app.api.generation import text_deltas, wait_until_done
from app.api.routing import StrictJSONRoute
from app.deps import ReadyServiceDep, SettingsDep
from app.engine import GenerationRequest
from app.errors import InvalidInput, NotFound
from app.lm.generate import SamplingParams
from app.schemas import ErrorResponse, OpenAICompletion, OpenAICompletionRequest, OpenAIModel, OpenAIModelList

router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=StrictJSONRoute)


def _check(req: OpenAICompletionRequest, service, settings) -> None:
    active = service.active.name
    if req.model is not None and req.model != active:
        raise NotFound(f"model {req.model!r} is not being served; the active model is {active!r}", "model")
    prompt = req.prompt_text
    if len(prompt) > settings.max_prefix_chars:
        raise InvalidInput(f"prompt: more than the limit of {settings.max_prefix_chars} characters", "prompt")
    if req.max_tokens > settings.max_new_chars:
        raise InvalidInput(f"max_tokens: at most {settings.max_new_chars}", "max_tokens")
    if req.n > settings.max_n:
        raise InvalidInput(f"n: at most {settings.max_n}", "n")
    if any(len(s) > settings.max_stop_chars for s in req.stop_list):
        raise InvalidInput(f"stop: each stop string may have at most {settings.max_stop_chars} characters", "stop")


def _usage(gen: GenerationRequest) -> dict:
    completion = sum(len(s.text) for s in gen.seqs)
    return {
        "prompt_tokens": len(gen.prefix),
        "completion_tokens": completion,
        "total_tokens": len(gen.prefix) + completion,
    }


@router.post(
    "/completions",
    response_model=OpenAICompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The completion, or with `stream` its events."},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    },
    summary="OpenAI-compatible completions (one token = one character)",
)
async def completions(req: OpenAICompletionRequest, request: Request, service: ReadyServiceDep, settings: SettingsDep):
    _check(req, service, settings)
    params = SamplingParams(
        max_new_chars=req.max_tokens, temperature=req.temperature, top_p=req.top_p, stop=tuple(req.stop_list)
    )
    gen = service.submit_completion(req.prompt_text, params, n=req.n, seed=req.seed, stream=req.stream)
    ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), gen.loaded.name

    def choice(index: int, text: str, finish_reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        body = {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return {"data": json.dumps(body, ensure_ascii=False)}

    if req.stream:

        async def events():
            async for merged in text_deltas(gen):
                yield chunk(
                    [
                        {"index": i, "text": t, "logprobs": None, "finish_reason": None}
                        for i, t in sorted(merged.items())
                    ]
                )
            finals = [
                {"index": s.index, "text": "", "logprobs": None, "finish_reason": s.finish_reason} for s in gen.seqs
            ]
            yield chunk(finals, _usage(gen))
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), headers=STREAM_HEADERS, sep="\n", ping=15)
    if not await wait_until_done(gen, request):
        return Response(status_code=499)
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice(s.index, s.text, s.finish_reason) for s in gen.seqs],
        "usage": _usage(gen),
    }


@router.get("/models", response_model=OpenAIModelList, summary="OpenAI-compatible model list (the model being served)")
def models(service: ReadyServiceDep) -> OpenAIModelList:
    loaded = service.active
    return OpenAIModelList(data=[OpenAIModel(id=loaded.name, created=_epoch(loaded.meta.get("created_at")))])


def _epoch(iso: str | None) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0
