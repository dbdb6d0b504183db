"""POST /score: how well a model predicts a text (loss per character, bits per character, perplexity)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ReadyServiceDep, SettingsDep
from app.api.routing import StrictJSONRoute
from app.api.schemas import ErrorResponse, ScoreRequest, ScoreResponse
from app.errors import InvalidInput
from app.service.scoring import score_text

router = APIRouter(tags=["models"], route_class=StrictJSONRoute)


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Score a text",
)
def score(req: ScoreRequest, service: ReadyServiceDep, settings: SettingsDep) -> ScoreResponse:
    """Each character is predicted from all the characters before it (the state is carried
    through the whole text), the way to compare models on your own held-out text. With
    `per_char`, each character's log-probability (and `top` alternatives): a surprisal map."""
    if len(req.text) > settings.max_score_chars:
        raise InvalidInput(f"text: more than the limit of {settings.max_score_chars} characters", "text")
    if req.per_char and len(req.text) > settings.max_score_chars_per_char:
        raise InvalidInput(
            f"text: more than the limit of {settings.max_score_chars_per_char} characters with per_char", "text"
        )
    name, s, chars = score_text(service.models, req.text, req.model, req.top if req.per_char else None)
    return ScoreResponse(
        chars=chars,
        model=name,
        nats_per_char=s.nats_per_char,
        bits_per_char=s.bits_per_char,
        perplexity=s.perplexity,
        chars_scored=s.chars_scored,
        unknown_chars=s.unknown_chars,
    )
