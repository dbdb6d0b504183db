"""POST /complete: continue a prefix with the active model, whole or streamed as Server-Sent Events."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from app.api.generation import GenerationError, text_deltas, wait_until_done
from app.api.routing import StrictJSONRoute
from app.deps import ReadyServiceDep, SettingsDep
from app.engine import GenerationRequest
from app.errors import InvalidInput
from app.lm.generate import SamplingParams
from app.schemas import CompleteRequest, CompleteResponse, ErrorResponse
from app.service import ModelService

router = APIRouter(tags=["completion"], route_class=StrictJSONRoute)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def check_limits(req: CompleteRequest, settings) -> None:
    """Bounds that depend on settings, checked before any work starts."""
    if len(req.prefix) > settings.max_prefix_chars:
        raise InvalidInput(
            f"prefix: {len(req.prefix)} characters is more than the limit of {settings.max_prefix_chars}", "prefix"
        )
    if req.max_new_chars > settings.max_new_chars:
        raise InvalidInput(f"max_new_chars: at most {settings.max_new_chars}", "max_new_chars")
    if req.n > settings.max_n:
        raise InvalidInput(f"n: at most {settings.max_n}", "n")
    for s in req.stop:
        if len(s) > settings.max_stop_chars:
            raise InvalidInput(f"stop: each stop string may have at most {settings.max_stop_chars} characters", "stop")


def sampling_params(req: CompleteRequest) -> SamplingParams:
    return SamplingParams(
        max_new_chars=req.max_new_chars,
        temperature=req.temperature,
        top_k=req.top_k or 0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        stop=tuple(req.stop),
    )


def response_body(service: ModelService, req: GenerationRequest) -> dict:
    result = service.summary(req)
    return CompleteResponse(
        model=result.model,
        seed=result.seed,
        choices=result.choices,
        unknown_chars=result.unknown_chars,
        usage={"prefix_chars": result.prefix_chars, "completion_chars": result.completion_chars},
    ).model_dump()


async def sse_events(service: ModelService, gen: GenerationRequest):
    """New text as `data:` events (whatever accumulated since the last one), a final event, [DONE]."""
    try:
        async for merged in text_deltas(gen):
            choices = [{"index": i, "text": t} for i, t in sorted(merged.items())]
            yield {"data": json.dumps({"choices": choices}, ensure_ascii=False)}
    except GenerationError as exc:
        yield {"data": json.dumps({"error": {"type": "internal_error", "message": str(exc)}})}
        return
    body = response_body(service, gen)
    body["choices"] = [{"index": c["index"], "text": "", "finish_reason": c["finish_reason"]} for c in body["choices"]]
    yield {"data": json.dumps(body, ensure_ascii=False)}
    yield {"data": "[DONE]"}


@router.post(
    "/complete",
    response_model=CompleteResponse,
    responses={
        200: {
            "description": "The completion; with `stream: true`, a text/event-stream of `data: {json}` events.",
            "content": {"text/event-stream": {"example": 'data: {"choices": [{"index": 0, "text": " i am"}]}\n\n'}},
        },
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "Too many requests waiting; retry after Retry-After seconds."},
    },
    summary="Complete a prefix",
)
async def complete(req: CompleteRequest, request: Request, service: ReadyServiceDep, settings: SettingsDep):
    """Generates up to `max_new_chars` characters after `prefix`, `n` times. Characters the model
    has never seen are read as UNK and listed in `unknown_chars`; UNK is never generated.
    Concurrent requests are decoded together (continuous batching)."""
    check_limits(req, settings)
    gen = service.submit_completion(req.prefix, sampling_params(req), n=req.n, seed=req.seed, stream=req.stream)
    if req.stream:
        return EventSourceResponse(sse_events(service, gen), headers=STREAM_HEADERS, sep="\n", ping=15)
    # a caller that hangs up before the answer is ready stops its generation, as in streaming
    if not await wait_until_done(gen, request):
        return Response(status_code=499)  # nobody is listening; the status is for the logs
    return response_body(service, gen)
