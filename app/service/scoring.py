"""Scoring a text with a stored model, and per-character log-probabilities as the API shows them."""

from __future__ import annotations

from app.lm import score as lm_score
from app.lm.score import CharLogprob, Score, char_logprobs
from app.lm.vocab import Vocab
from app.service.models import Models


def as_dict(lp: CharLogprob | None, vocab: Vocab, char: str | None = None) -> dict | None:
    """One character's log-probability as the API shows it (None for a text's first character).
    `char` is the character as written, where it may be one the vocabulary reads as UNK."""
    if lp is None:
        return None
    return {
        "char": char if char is not None else vocab.id_to_char(lp.id),
        "logprob": lp.logprob,
        "top": [{"char": vocab.id_to_char(i), "logprob": v} for i, v in lp.top],
    }


def score_text(
    models: Models, text: str, model: str | None = None, per_char_top: int | None = None
) -> tuple[str, Score, list[dict | None] | None]:
    """/score: how well a model predicts a text, and with `per_char_top` (alternatives per character)
    each character's log-probability, by the same code as completions' logprobs. Blocking."""
    loaded = models.get(model)
    score = lm_score.score_text(loaded.model, loaded.vocab, text)
    chars = None
    if per_char_top is not None:
        records = char_logprobs(loaded.model, loaded.vocab, text, per_char_top)
        chars = [as_dict(r, loaded.vocab, c) for r, c in zip(records, text, strict=True)]
    return loaded.name, score, chars
