"""Decoding: the prefix is read once, then every new character is one step that carries the state.

A DecodeBatch holds any number of sequences, each with its own sampling parameters and
random generator; sequences join after their prefix is read and leave when they finish,
so one forward pass per step serves every request in the batch. The tutorial instead
re-ran the whole text for each new character: O(n^2) for n characters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from app.lm.model import CharRNN
from app.lm.vocab import UNK_INDEX, Vocab


@dataclass(frozen=True)
class SamplingParams:
    max_new_chars: int = 100  # generation ends ("length") after this many characters
    temperature: float = 0.0  # 0 = greedy (argmax), as in the tutorial
    top_k: int = 0  # keep only the k likeliest characters; 0 = off
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = off
    stop: tuple[str, ...] = ()  # generation ends ("stop") at the first of these; not included


def random_seed() -> int:
    return secrets.randbits(32)


class Sequence:
    """One completion in progress: its generated characters, its generator and why it ended."""

    def __init__(self, params: SamplingParams, seed: int, index: int = 0):
        self.params = params
        self.seed = seed
        self.index = index
        # one stream per (seed, index): choices of one request differ, and a sequence's draws
        # never depend on what else shares its batch
        self.rng = np.random.default_rng([seed, index])
        self.chars: list[str] = []
        self.steps = 0  # characters sampled, including any that a stop string later removed
        self.finish_reason: str | None = None
        self._released = 0  # characters already handed to a stream
        self._stop_window = max((len(s) for s in params.stop), default=0)
        if params.max_new_chars <= 0:
            self.finish_reason = "length"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def append(self, char: str) -> None:
        self.chars.append(char)
        self.steps += 1
        if self._stop_window:
            tail = "".join(self.chars[-self._stop_window :])
            for stop in self.params.stop:
                if tail.endswith(stop):
                    del self.chars[len(self.chars) - len(stop) :]
                    self.finish_reason = "stop"
                    return
        if self.steps >= self.params.max_new_chars:
            self.finish_reason = "length"

    def _held_back(self) -> int:
        """Characters at the end that could still grow into a stop string: not safe to show yet."""
        if self.finished or not self._stop_window:
            return 0
        tail = "".join(self.chars[-self._stop_window :])
        return max(
            (k for stop in self.params.stop for k in range(1, len(stop)) if tail.endswith(stop[:k])),
            default=0,
        )

    def take_new_text(self) -> str:
        """Text generated since the last call that no stop string can take back."""
        upto = len(self.chars) - self._held_back()
        if upto <= self._released:
            return ""
        new = "".join(self.chars[self._released : upto])
        self._released = upto
        return new


def sample_next(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One id per row of logits (B, V), each row with its own parameters; never UNK.

    Works in NumPy on the host: for the small vocabularies of character models its per-call
    cost is a few microseconds where each torch op costs several. Every row is computed on
    its own, so a row's choice does not depend on what else is in the batch.
    """
    x = logits.detach().float().cpu().numpy().astype(np.float64)  # (B, V)
    x[:, UNK_INDEX] = -np.inf
    greedy = x.argmax(axis=1)  # (B,)
    temps = np.array([s.params.temperature for s in seqs])
    sampled_rows = np.flatnonzero(temps > 0)
    if len(sampled_rows) == 0:
        return greedy.tolist()
    z = x[sampled_rows] / temps[sampled_rows, None]
    p = np.exp(z - z.max(axis=1, keepdims=True))  # (S, V), unnormalised; UNK is exp(-inf) = 0
    p /= p.sum(axis=1, keepdims=True)
    vocab_size = p.shape[1]
    top_k = np.array([seqs[r].params.top_k or vocab_size for r in sampled_rows])
    top_p = np.array([seqs[r].params.top_p for r in sampled_rows])
    # every sampled row is ranked, filtered or not, so the same draw picks the same character
    # whatever the other rows of the batch ask for
    order = np.argsort(-p, axis=1, kind="stable")  # (S, V), likeliest first
    p = np.take_along_axis(p, order, axis=1)
    before = np.cumsum(p, axis=1) - p  # mass ranked above each character
    keep = (np.arange(vocab_size)[None, :] < top_k[:, None]) & (before < top_p[:, None])
    keep[:, 0] = True  # the likeliest character always survives
    cdf = np.cumsum(p * keep, axis=1)  # (S, V)
    # a sampled row draws exactly one number per step, a greedy row none
    u = np.array([seqs[r].rng.random() for r in sampled_rows]) * cdf[:, -1]
    choice = np.argmax(cdf > u[:, None], axis=1)  # first rank whose cumulative mass passes u
    choice = np.take_along_axis(order, choice[:, None], axis=1)[:, 0]
    greedy[sampled_rows] = choice
    return greedy.tolist()


class DecodeBatch:
    """The sequences being decoded together, their recurrent state and their next-character logits."""

    def __init__(self, model: CharRNN, vocab: Vocab):
        self.model = model
        self.vocab = vocab
        self.device = model.fc.weight.device
        self.seqs: list[Sequence] = []
        self.state: torch.Tensor | None = None  # (R, B, H)
        self.logits: torch.Tensor | None = None  # (B, V)

    def __len__(self) -> int:
        return len(self.seqs)

    @torch.inference_mode()
    def add(self, prefix: str, seqs: list[Sequence]) -> list[Sequence]:
        """Reads `prefix` once and lets `seqs` join; returns any that finished at once (max 0)."""
        done = [s for s in seqs if s.finished]
        seqs = [s for s in seqs if not s.finished]
        if not seqs:
            return done
        ids = torch.tensor([self.vocab.encode(prefix)], dtype=torch.long, device=self.device)  # (1, T)
        logits, state = self.model(ids, last_only=True)  # (1, 1, V), (R, 1, H)
        logits = logits[:, -1].expand(len(seqs), -1)  # (n, V)
        state = state.expand(-1, len(seqs), -1)  # (R, n, H)
        if self.seqs:
            self.logits = torch.cat((self.logits, logits), dim=0)
            self.state = torch.cat((self.state, state), dim=1)
        else:
            self.logits, self.state = logits.contiguous(), state.contiguous()
        self.seqs.extend(seqs)
        return done

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Every sequence gets one character; finished ones leave. Returns those that finished."""
        if not self.seqs:
            return []
        next_ids = sample_next(self.logits, self.seqs)
        id_to_char = self.vocab.id_to_char
        for seq, i in zip(self.seqs, next_ids, strict=True):
            seq.append(id_to_char(i))
        finished = [s for s in self.seqs if s.finished]
        if finished:
            keep = [r for r, s in enumerate(self.seqs) if not s.finished]
            self.seqs = [self.seqs[r] for r in keep]
            next_ids = [next_ids[r] for r in keep]
            if not keep:
                self.state = self.logits = None
                return finished
            rows = torch.tensor(keep, device=self.device)
            self.state = self.state.index_select(1, rows)
        ids = torch.tensor(next_ids, dtype=torch.long, device=self.device)  # (B,)
        self.logits, self.state = self.model.step(ids, self.state)  # (B, V), (R, B, H)
        return finished

    def remove(self, seqs: list[Sequence]) -> None:
        """Drops sequences whose caller went away."""
        gone = {id(s) for s in seqs}
        keep = [r for r, s in enumerate(self.seqs) if id(s) not in gone]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[r] for r in keep]
        if not keep:
            self.state = self.logits = None
            return
        rows = torch.tensor(keep, device=self.device)
        self.state = self.state.index_select(1, rows)
        self.logits = self.logits.index_select(0, rows)


def generate(
    model: CharRNN, vocab: Vocab, prefix: str, params: SamplingParams, n: int = 1, seed: int | None = None
) -> list[Sequence]:
    """Completes `prefix` n times, on its own batch. Returns the finished sequences in index order."""
    seed = random_seed() if seed is None else seed
    seqs = [Sequence(params, seed, i) for i in range(n)]
    batch = DecodeBatch(model, vocab)
    batch.add(prefix, seqs)
    while batch.seqs:
        batch.step()
    return seqs
