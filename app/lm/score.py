"""Scoring text: mean loss per character (nats), bits per character and perplexity, state carried throughout."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from app.lm.model import CharRNN
from app.lm.vocab import UNK_INDEX, Vocab


@dataclass
class Score:
    nats_per_char: float
    bits_per_char: float
    perplexity: float
    chars_scored: int
    unknown_chars: int


class ScoringCancelled(Exception):
    pass


@dataclass(frozen=True)
class CharLogprob:
    """One character as the model saw it: its id, its log-probability given everything before it,
    and the likeliest alternatives (never UNK) with theirs, likeliest first."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """The model's distribution over the vocabulary (UNK included), in float32 whatever the logits'
    dtype: what per-character scores and decoding's log-probabilities both report. (..., V)"""
    return torch.log_softmax(logits.float(), dim=-1)


def top_alternatives(row: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    """The k likeliest ids of one row of log-probabilities (V,), UNK left out, likeliest first."""
    if k <= 0:
        return ()
    row = row.copy()
    row[UNK_INDEX] = -np.inf
    k = min(k, len(row) - 1)
    best = np.argpartition(-row, k - 1)[:k]
    best = best[np.argsort(-row[best], kind="stable")]
    return tuple((int(i), float(row[i])) for i in best)


@torch.no_grad()
def char_logprobs(model: CharRNN, vocab: Vocab, text: str, top: int = 0, chunk: int = 1024) -> list[CharLogprob | None]:
    """Each character's log-probability given all before it (None for the first, which has no
    context), with `top` alternatives: a surprisal map of the text, and echo's prefix scores."""
    was_training = model.training
    model.eval()
    device = model.fc.weight.device
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    out: list[CharLogprob | None] = [None] if len(ids) else []
    state = None
    for start in range(0, len(ids) - 1, chunk):
        x = ids[start : start + chunk].to(device)[None]  # (1, T)
        y = ids[start + 1 : start + chunk + 1]
        logits, state = model(x[:, : len(y)], state)  # (1, T, V)
        lp = log_probs(logits[0]).cpu().numpy()  # (T, V)
        for row, target in zip(lp, y.tolist(), strict=True):
            out.append(CharLogprob(target, float(row[target]), top_alternatives(row, top)))
    model.train(was_training)
    return out


@torch.no_grad()
def mean_loss(
    model: CharRNN,
    ids: torch.Tensor,
    streams: int = 1,
    chunk: int = 1024,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, int]:
    """Sum of next-character losses over `ids` (1-D), and how many were scored.

    With streams=1 the state is carried through the whole text: every character is predicted
    from everything before it. streams>1 cuts the text into that many parallel pieces (faster,
    each piece starts from a fresh state): the trainer's quick periodic evaluation.
    """
    was_training = model.training
    model.eval()
    device = model.fc.weight.device
    length = (len(ids) - 1) // streams
    if length < 1:
        return 0.0, 0
    x = ids[: length * streams].view(streams, length).to(device)  # (S, L)
    y = ids[1 : length * streams + 1].view(streams, length).to(device)  # (S, L)
    state, total = None, 0.0
    for start in range(0, length, chunk):
        if should_stop is not None and should_stop():
            raise ScoringCancelled()
        logits, state = model(x[:, start : start + chunk], state)  # (S, T, V)
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y[:, start : start + chunk].reshape(-1), reduction="sum"
        ).item()
    model.train(was_training)
    return total, length * streams


def score_text(model: CharRNN, vocab: Vocab, text: str) -> Score:
    """How well `model` predicts `text`: each character given all the characters before it."""
    if len(text) < 2:
        raise ValueError("text needs at least 2 characters to score")
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    total, count = mean_loss(model, ids)
    nats = total / count
    return Score(
        nats_per_char=nats,
        bits_per_char=nats / math.log(2),
        perplexity=math.exp(min(nats, 700.0)),
        chars_scored=count,
        unknown_chars=int((ids == UNK_INDEX).sum()),
    )
