"""POST /complete: continue a prefix with the active model."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep, SettingsDep
from app.errors import InvalidInput
from app.lm.generate import SamplingParams
from app.schemas import CompleteRequest, CompleteResponse, ErrorResponse

router = APIRouter(tags=["completion"])


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


@router.post(
    "/complete",
    response_model=CompleteResponse,
    responses={422: {"model": ErrorResponse}},
    summary="Complete a prefix",
)
def complete(req: CompleteRequest, service: ServiceDep, settings: SettingsDep) -> CompleteResponse:
    """Generates up to `max_new_chars` characters after `prefix`, `n` times. Characters the model
    has never seen are read as UNK and listed in `unknown_chars`; UNK is never generated."""
    check_limits(req, settings)
    result = service.complete(req.prefix, sampling_params(req), n=req.n, seed=req.seed)
    return CompleteResponse(
        model=result.model,
        seed=result.seed,
        choices=result.choices,
        unknown_chars=result.unknown_chars,
        usage={"prefix_chars": result.prefix_chars, "completion_chars": result.completion_chars},
    )
