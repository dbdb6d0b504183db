"""POST /v1/completions and GET /v1/models in OpenAI's shapes, so existing clients and tools work.

One token is one character: max_tokens counts characters, usage counts characters, and logprobs
report characters (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api import protocol
from app.api.auth import tenant
from app.api.deps import ReadyServiceDep, SettingsDep
from app.api.generation import event_stream, text_deltas, wait_until_done
from app.api.routing import StrictJSONRoute
from app.api.schemas import (
    ErrorResponse,
    OpenAIChoice,
    OpenAICompletion,
    OpenAICompletionRequest,
    OpenAILogprobs,
    OpenAIModel,
    OpenAIModelList,
    OpenAIUsage,
)
from app.engine import GenerationRequest
from app.lm.score import CharLogprob
from app.lm.vocab import Vocab
from app.service.completions import Completions

router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=StrictJSONRoute)


def _usage(gen: GenerationRequest) -> OpenAIUsage:
    prompt = sum(len(p) for p in gen.prompts)
    completion = sum(len(s.text) for s in gen.seqs)
    return OpenAIUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def openai_logprobs(records: list[CharLogprob | None], chars: str, offset: int, vocab: Vocab) -> OpenAILogprobs:
    """Characters and their log-probabilities in OpenAI's completions format. `chars` are the
    characters as written (an echoed prompt may hold characters the model reads as UNK); `offset` is
    where they start in the prompt-plus-completion text."""
    return OpenAILogprobs(
        tokens=list(chars),
        token_logprobs=[r.logprob if r is not None else None for r in records],
        top_logprobs=[{vocab.id_to_char(i): v for i, v in r.top} if r is not None else None for r in records],
        text_offset=list(range(offset, offset + len(chars))),
    )


@router.post(
    "/completions",
    response_model=OpenAICompletion,
    response_model_exclude_none=False,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The completion, or with `stream` its events."},
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    summary="OpenAI-compatible completions (one token = one character)",
)
async def completions(req: OpenAICompletionRequest, request: Request, service: ReadyServiceDep, settings: SettingsDep):
    """OpenAI's legacy completions. `prompt` may be a list: one choice per prompt and per `n`
    (choice `index` = prompt number x n + k). `logprobs` (up to 20) and `echo` as OpenAI's, with
    `max_tokens: 0` scoring a text; `logit_bias` keys are the vocabulary ids of GET /vocab.
    Extensions beside OpenAI's parameters: `top_k`, `min_p`, `repetition_penalty`,
    `repeat_last_n`, `regex`."""
    gen = await service.completions.submit(protocol.from_openai(req, settings, tenant(request)))
    ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), gen.loaded.name
    vocab = gen.loaded.vocab

    def body(choices: list[OpenAIChoice], usage: OpenAIUsage | None = None) -> OpenAICompletion:
        return OpenAICompletion(id=ident, created=created, model=model, choices=choices, usage=usage)

    def echoed(index: int) -> tuple[str, OpenAILogprobs | None]:
        """The prompt of choice `index` and, where asked for, its own log-probabilities."""
        prompt = gen.prompts[index // gen.n]
        if gen.prompt_logprobs is None:
            return prompt, None
        return prompt, openai_logprobs(gen.prompt_logprobs[index // gen.n], prompt, 0, vocab)

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[dict]:
            offsets = {s.index: len(gen.prompts[s.index // gen.n]) for s in gen.seqs}
            if req.echo:
                first = []
                for s in gen.seqs:
                    text, lps = echoed(s.index)
                    first.append(OpenAIChoice(index=s.index, text=text, logprobs=lps, finish_reason=None))
                yield {"data": body(first).model_dump_json(exclude={"usage"})}
            async for merged in text_deltas(gen):
                choices = []
                for i, delta in sorted(merged.items()):
                    lps = None
                    if delta.logprobs is not None:
                        lps = openai_logprobs(list(delta.logprobs), delta.text, offsets[i], vocab)
                    offsets[i] += len(delta.text)
                    choices.append(OpenAIChoice(index=i, text=delta.text, logprobs=lps, finish_reason=None))
                yield {"data": body(choices).model_dump_json(exclude={"usage"})}
            finals = [OpenAIChoice(index=s.index, text="", finish_reason=s.finish_reason) for s in gen.seqs]
            yield {"data": body(finals, _usage(gen)).model_dump_json()}
            if include_usage:  # OpenAI's usage chunk: no choices, the whole request's usage
                yield {"data": body([], _usage(gen)).model_dump_json()}
            yield {"data": "[DONE]"}

        return event_stream(events())
    if not await wait_until_done(gen, request):
        return Response(status_code=499)
    choices = []
    for c in Completions.summary(gen).choices:
        seq = gen.seqs[c.index]
        text, lps = c.completion, None
        if seq.logprobs is not None:
            lps = openai_logprobs(list(seq.logprobs), c.completion, len(c.prompt), vocab)
        if req.echo:
            prompt, prompt_lps = echoed(c.index)
            text = prompt + text
            if lps is not None and prompt_lps is not None:
                lps = OpenAILogprobs(
                    tokens=prompt_lps.tokens + lps.tokens,
                    token_logprobs=prompt_lps.token_logprobs + lps.token_logprobs,
                    top_logprobs=prompt_lps.top_logprobs + lps.top_logprobs,
                    text_offset=prompt_lps.text_offset + lps.text_offset,
                )
        choices.append(OpenAIChoice(index=c.index, text=text, logprobs=lps, finish_reason=c.finish_reason))
    return body(choices, _usage(gen))


@router.get(
    "/models",
    response_model=OpenAIModelList,
    responses={503: {"model": ErrorResponse}},
    summary="OpenAI-compatible model list: every stored model that loads",
)
async def models(service: ReadyServiceDep) -> OpenAIModelList:
    summaries = await run_in_threadpool(service.models.summaries)
    return OpenAIModelList(
        data=[OpenAIModel(id=m["name"], created=_epoch(m.get("created_at"))) for m in summaries if m["ok"]]
    )


def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0
