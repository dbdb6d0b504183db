"""POST /complete: continue a prefix, whole or streamed as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response

from app.api import protocol
from app.api.auth import tenant
from app.api.deps import ReadyServiceDep, SettingsDep
from app.api.generation import GenerationError, event_stream, text_deltas, wait_until_done
from app.api.routing import StrictJSONRoute
from app.api.schemas import CompleteRequest, CompleteResponse, ErrorResponse
from app.engine import GenerationRequest
from app.service.completions import Completions
from app.service.scoring import as_dict

router = APIRouter(tags=["completion"], route_class=StrictJSONRoute)


def response_body(gen: GenerationRequest, logprobs: bool = True) -> dict:
    """The body of a CompleteResponse, as a dict: the route's response_model validates it once on
    its way out (built as a model here and dumped again, a body with log-probabilities, thousands
    of entries, cost the event loop three passes over them)."""
    result = Completions.summary(gen, logprobs)
    return {
        "model": result.model,
        "seed": result.seed,
        "choices": [
            {
                "index": c.index,
                "text": c.prompt + c.completion,
                "completion": c.completion,
                "finish_reason": c.finish_reason,
                "logprobs": c.logprobs,
            }
            for c in result.choices
        ],
        "unknown_chars": result.unknown_chars,
        "usage": {"prefix_chars": result.prompt_chars, "completion_chars": result.completion_chars},
    }


async def sse_events(gen: GenerationRequest) -> AsyncIterator[dict]:
    """New text as `data:` events (whatever accumulated since the last one), a final event, [DONE].
    With echo, a first event carries the prefix's log-probabilities."""
    vocab = gen.loaded.vocab
    if gen.prompt_logprobs is not None:
        [prompt], [echoed] = gen.prompts, gen.prompt_logprobs
        lps = [as_dict(lp, vocab, c) for lp, c in zip(echoed, prompt, strict=True)]
        choices = [{"index": s.index, "text": "", "logprobs": lps} for s in gen.seqs]
        yield {"data": json.dumps({"choices": choices}, ensure_ascii=False)}
    try:
        async for merged in text_deltas(gen):
            choices = []
            for i, delta in sorted(merged.items()):
                choice: dict = {"index": i, "text": delta.text}
                if delta.logprobs is not None:
                    choice["logprobs"] = [as_dict(lp, vocab) for lp in delta.logprobs]
                choices.append(choice)
            yield {"data": json.dumps({"choices": choices}, ensure_ascii=False)}
    except GenerationError as exc:
        yield {"data": json.dumps({"error": {"type": "internal_error", "message": str(exc)}})}
        return
    body = response_body(gen, logprobs=False)  # they went out with the text
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
        404: {"model": ErrorResponse, "description": "No stored model of that name."},
        409: {"model": ErrorResponse, "description": "The model named cannot be loaded."},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "Too many requests waiting; retry after Retry-After seconds."},
        503: {"model": ErrorResponse, "description": "Not ready yet; retry after Retry-After seconds."},
    },
    summary="Complete a prefix",
)
async def complete(req: CompleteRequest, request: Request, service: ReadyServiceDep, settings: SettingsDep):
    """Generates up to `max_new_chars` characters after `prefix`, `n` times. Characters the model
    has never seen are read as UNK and listed in `unknown_chars`; UNK is never generated.
    Concurrent requests are decoded together (continuous batching)."""
    gen = await service.completions.submit(protocol.from_complete(req, settings, tenant(request)))
    if req.stream:
        return event_stream(sse_events(gen))
    # a caller that hangs up before the answer is ready stops its generation, as in streaming
    if not await wait_until_done(gen, request):
        return Response(status_code=499)  # nobody is listening; the status is for the logs
    return response_body(gen)
