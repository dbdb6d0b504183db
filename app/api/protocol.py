"""The one place a completion request of any wire format becomes the service's CompletionRequest.

Like vLLM's `CompletionRequest.to_sampling_params()` and TGI's `Validation`: limits that depend on
settings are checked here, once, for /complete and /v1/completions alike, so a new sampling
option is added in one place (plus its field in each wire format, app/api/schemas.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.api.schemas import CompleteRequest, OpenAICompletionRequest, SamplerOptions
from app.config import Settings
from app.errors import InvalidInput
from app.lm.sampling import SamplingParams
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
    prompts: list[str],
    params: SamplingParams,
    n: int,
    seed: int | None,
    stream: bool,
    model: str | None,
    regex: str | None,
    bias: dict,
    echo: bool,
    tenant: str = "",
) -> CompletionRequest:
    """Checks the settings' bounds (a 422 naming the field as the caller spelled it) and builds the request."""
    for prompt in prompts:
        if len(prompt) > settings.max_prefix_chars:
            raise InvalidInput(
                f"{names.prompt}: {len(prompt)} characters is more than the limit of {settings.max_prefix_chars}",
                names.prompt,
            )
    if len(prompts) > settings.max_batch_size:
        raise InvalidInput(f"{names.prompt}: at most {settings.max_batch_size} prompts in one request", names.prompt)
    if params.max_new_chars > settings.max_new_chars:
        raise InvalidInput(f"{names.max_new}: at most {settings.max_new_chars}", names.max_new)
    if n > settings.max_n:
        raise InvalidInput(f"n: at most {settings.max_n}", "n")
    if any(len(s) > settings.max_stop_chars for s in params.stop):
        raise InvalidInput(f"stop: each stop string may have at most {settings.max_stop_chars} characters", "stop")
    return CompletionRequest(
        prompts=prompts,
        params=params,
        n=n,
        seed=seed,
        stream=stream,
        model=model,
        regex=regex,
        bias=bias,
        echo=echo,
        tenant=tenant,
    )


def sampler_options(req: SamplerOptions) -> dict:
    """The options both wire formats share (SamplerOptions), as SamplingParams' arguments."""
    return {name: getattr(req, name) for name in SamplerOptions.model_fields if name != "regex"}


def from_complete(req: CompleteRequest, settings: Settings, tenant: str = "") -> CompletionRequest:
    """POST /complete. `echo` reports the prefix's log-probabilities, so it implies `logprobs` 0."""
    logprobs = req.logprobs if req.logprobs is not None or not req.echo else 0
    params = SamplingParams(
        max_new_chars=req.max_new_chars,
        temperature=req.temperature,
        top_k=req.top_k or 0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        stop=tuple(req.stop),
        **sampler_options(req),
        logprobs=logprobs,
    )
    return completion_request(
        COMPLETE,
        settings,
        prompts=[req.prefix],
        params=params,
        n=req.n,
        seed=req.seed,
        stream=req.stream,
        model=req.model,
        regex=req.regex,
        bias=dict(req.logit_bias),
        echo=req.echo,
        tenant=tenant,
    )


def from_openai(req: OpenAICompletionRequest, settings: Settings, tenant: str = "") -> CompletionRequest:
    """POST /v1/completions (one token is one character; logit_bias keys are vocabulary ids)."""
    params = SamplingParams(
        max_new_chars=req.max_tokens,
        temperature=req.temperature,
        top_k=req.top_k or 0,
        top_p=req.top_p,
        stop=tuple(req.stop_list),
        **sampler_options(req),
        logprobs=req.logprobs,
    )
    return completion_request(
        OPENAI,
        settings,
        prompts=req.prompts,
        params=params,
        n=req.n,
        seed=req.seed,
        stream=req.stream,
        model=req.model,
        regex=req.regex,
        bias={int(k): v for k, v in (req.logit_bias or {}).items()},
        echo=req.echo,
        tenant=tenant,
    )
