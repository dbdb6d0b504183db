"""Scoring text: mean loss per character (nats), bits per character and perplexity, state carried throughout."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
