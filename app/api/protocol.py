"""The one place a completion request of any wire format becomes the service's CompletionRequest.

Like vLLM's `CompletionRequest.to_sampling_params()` and TGI's `Validation`: limits that depend on
settings are checked here, once, for /complete and /v1/completions alike, so a new sampling
option is added in one place (plus its field in each wire format, app/api/schemas.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.api.schemas import CompleteRequest, OpenAICompletionRequest
from app.config import Settings
from app.errors import InvalidInput
from app.lm.generate import SamplingParams
from app.service.completions import CompletionRequest


@dataclass(frozen=True)
class Names:
    """What a wire format calls the fields whose errors name them."""

    prompt: str
    max_new: str


COMPLETE = Names(prompt="prefix", max_new="max_new_chars")
OPENAI = Names(prompt="prompt", max_new="max_tokens")


def completion_request(
    names: Names,
    settings: Settings,
    *,
    prompt: str,
    max_new: int,
    temperature: float,
    top_k: int,
    top_p: float,
    stop: list[str],
    n: int,
    seed: int | None,
    stream: bool,
) -> CompletionRequest:
    """Checks the settings' bounds (a 422 naming the field as the caller spelled it) and builds the request."""
    if len(prompt) > settings.max_prefix_chars:
        raise InvalidInput(
            f"{names.prompt}: {len(prompt)} characters is more than the limit of {settings.max_prefix_chars}",
            names.prompt,
        )
    if max_new > settings.max_new_chars:
        raise InvalidInput(f"{names.max_new}: at most {settings.max_new_chars}", names.max_new)
    if n > settings.max_n:
        raise InvalidInput(f"n: at most {settings.max_n}", "n")
    if any(len(s) > settings.max_stop_chars for s in stop):
        raise InvalidInput(f"stop: each stop string may have at most {settings.max_stop_chars} characters", "stop")
    # top_p 0 (the API allows it: 1e-400 reads as 0.0) keeps only the likeliest character, as the least float does
    top_p = max(top_p, math.ulp(0.0))
    params = SamplingParams(max_new_chars=max_new, temperature=temperature, top_k=top_k, top_p=top_p, stop=tuple(stop))
    return CompletionRequest(prompt=prompt, params=params, n=n, seed=seed, stream=stream)


def from_complete(req: CompleteRequest, settings: Settings) -> CompletionRequest:
    """POST /complete."""
    return completion_request(
        COMPLETE,
        settings,
        prompt=req.prefix,
        max_new=req.max_new_chars,
        temperature=req.temperature,
        top_k=req.top_k or 0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        stop=req.stop,
        n=req.n,
        seed=req.seed,
        stream=req.stream,
    )


def from_openai(req: OpenAICompletionRequest, settings: Settings) -> CompletionRequest:
    """POST /v1/completions (one token is one character)."""
    return completion_request(
        OPENAI,
        settings,
        prompt=req.prompt_text,
        max_new=req.max_tokens,
        temperature=req.temperature,
        top_k=0,
        top_p=req.top_p,
        stop=req.stop_list,
        n=req.n,
        seed=req.seed,
        stream=req.stream,
    )
