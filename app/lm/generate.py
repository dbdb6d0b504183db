"""Decoding: the prefix is read once, then every new character is one step that carries the state.

A DecodeBatch holds any number of sequences, each with its own sampling parameters and
random generator. Sequences join between steps and leave when they finish, so one forward
pass per step serves every request in the batch. A short prefix is fed through those same
batched steps (one character per step, nothing sampled); a long one is read in chunks by
the sequence model first. The tutorial instead re-ran the whole text for each new
character: O(n^2) for n characters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from app.lm import decode
from app.lm.model import CharRNN
from app.lm.settings import setting
from app.lm.vocab import UNK_INDEX, Vocab

FEED_IN_BATCH = 32  # prefixes up to this long are fed through the shared batched steps
PREFILL_CHUNK = 512  # longer prefixes are read this many characters per engine step


@dataclass(frozen=True)
class SamplingParams:
    max_new_chars: int = setting(100, 'characters to generate at most (then finish_reason "length")', ge=0)
    temperature: float = setting(0.0, "sampling temperature; 0 = greedy (argmax), as in the tutorial", ge=0.0)
    top_k: int = setting(0, "sample from the k likeliest characters only; 0 = off", ge=0)
    top_p: float = setting(1.0, "sample from the smallest set whose probability reaches p; 1 = off", gt=0.0, le=1.0)
    stop: tuple[str, ...] = setting((), 'generation ends (finish_reason "stop") at the first of these; not included')


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
        self._uniforms = np.empty(0)  # drawn in blocks: same values as one draw per call, far cheaper
        self._next_uniform = 0
        self.chars: list[str] = []
        self.steps = 0  # characters sampled, including any that a stop string later removed
        self.finish_reason: str | None = None
        self._released = 0  # characters already handed to a stream
        self._stop_window = max((len(s) for s in params.stop), default=0)
        if params.max_new_chars <= 0:
            self.finish_reason = "length"

    def uniform(self) -> float:
        """The next number in [0, 1) of this sequence's own stream."""
        if self._next_uniform == len(self._uniforms):
            self._uniforms = self.rng.random(64)
            self._next_uniform = 0
        self._next_uniform += 1
        return self._uniforms[self._next_uniform - 1]

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


@dataclass(frozen=True)
class RowParams:
    """The sampling parameters of a batch's rows as arrays, kept beside the rows so that a step
    does not gather them from every sequence again."""

    temperature: np.ndarray  # (B,) float64; 0 = greedy
    top_k: np.ndarray  # (B,) int64; 0 = off
    top_p: np.ndarray  # (B,) float64; 1 = off

    @classmethod
    def of(cls, seqs: list[Sequence]) -> RowParams:
        n = len(seqs)
        return cls(
            np.fromiter((s.params.temperature for s in seqs), np.float64, n),
            np.fromiter((s.params.top_k for s in seqs), np.int64, n),
            np.fromiter((s.params.top_p for s in seqs), np.float64, n),
        )

    def take(self, rows) -> RowParams:
        return RowParams(self.temperature[rows], self.top_k[rows], self.top_p[rows])

    def __add__(self, other: RowParams) -> RowParams:
        return RowParams(
            np.concatenate((self.temperature, other.temperature)),
            np.concatenate((self.top_k, other.top_k)),
            np.concatenate((self.top_p, other.top_p)),
        )


def sample_next(logits: torch.Tensor, seqs: list[Sequence], params: RowParams | None = None) -> list[int]:
    """One id per row of logits (B, V), each row with its own parameters; never UNK.

    Works in NumPy on the host: for the small vocabularies of character models its per-call
    cost is a few microseconds where each torch op costs several. Each row is computed on its
    own and its cumulative distribution is always taken in vocabulary order, so a row's choice
    does not depend on what else is in the batch. `params` are the rows' parameters as arrays
    (RowParams.of(seqs) when not given).
    """
    params = RowParams.of(seqs) if params is None else params
    x = logits.detach().float().cpu().numpy().astype(np.float64)  # (B, V)
    x[:, UNK_INDEX] = -np.inf
    greedy = x.argmax(axis=1)  # (B,)
    rows = np.flatnonzero(params.temperature > 0)
    if len(rows) == 0:
        return greedy.tolist()
    everyone = len(rows) == len(seqs)
    z = (x if everyone else x[rows]) / params.temperature[rows, None]
    p = np.exp(z - z.max(axis=1, keepdims=True))  # (S, V) unnormalised; UNK is exp(-inf) = 0
    vocab_size = p.shape[1]
    top_k = np.where(params.top_k[rows] > 0, params.top_k[rows], vocab_size)
    top_p = params.top_p[rows]
    filtered = np.flatnonzero((top_k < vocab_size) | (top_p < 1.0))
    if len(filtered):  # top-k / top-p: zero what falls below each row's cut-off probability
        sub = p[filtered]
        ranked = -np.sort(-sub, axis=1)  # (F, V) likeliest first
        before = (np.cumsum(ranked, axis=1) - ranked) / ranked.sum(axis=1, keepdims=True)
        kept = np.minimum((before < top_p[filtered, None]).sum(axis=1), top_k[filtered])  # >= 1
        cutoff = ranked[np.arange(len(filtered)), kept - 1]
        p[filtered] = np.where(sub >= cutoff[:, None], sub, 0.0)
    cdf = np.cumsum(p, axis=1)  # (S, V)
    # a sampled row draws exactly one number per step, a greedy row none
    u = np.array([seqs[r].uniform() for r in rows]) * cdf[:, -1]
    greedy[rows] = np.argmax(cdf > u[:, None], axis=1)  # first id whose cumulative mass passes u
    return greedy.tolist()


@dataclass
class Prefill:
    """A long prefix being read in chunks; its sequences join the batch when one character is left."""

    seqs: list[Sequence]  # the completions of this prefix
    ids: list[int]  # the prefix
    position: int = 0  # ids read so far
    state: torch.Tensor | None = None  # (R, 1, H) after reading `position` ids


class DecodeBatch:
    """The sequences being decoded together, their recurrent state and their next-character logits.

    A row whose prefix is still being fed has `forced` ids left: its next inputs are those, and
    nothing is sampled for it until they run out.
    """

    def __init__(self, model: CharRNN, vocab: Vocab, dtype: torch.dtype = torch.float32):
        self.model = model
        self.vocab = vocab
        self.dtype = dtype  # of the steps' matrix products (see decode.step)
        self.device = model.fc.weight.device
        self.seqs: list[Sequence] = []
        self.params = RowParams.of([])  # the rows' sampling parameters, aligned with seqs
        self.forced: list[list[int]] = []  # per row: prefix ids still to feed
        self.state: torch.Tensor | None = None  # (R, B, H)
        self.logits: torch.Tensor | None = None  # (B, V)
        self._prefilling: list[Prefill] = []  # long prefixes being read, oldest first
        self.sampled = 0  # characters generated by the last step

    def __len__(self) -> int:
        """Rows in the batch, counting sequences whose long prefix is still being read."""
        return len(self.seqs) + sum(len(p.seqs) for p in self._prefilling)

    @property
    def busy(self) -> bool:
        return bool(self.seqs or self._prefilling)

    def add(self, prefix: str, seqs: list[Sequence]) -> None:
        """Queues `seqs` (n completions of one prefix) to join at the next step."""
        seqs = [s for s in seqs if not s.finished]
        if not seqs:
            return
        ids = self.vocab.encode(prefix)
        if len(ids) <= FEED_IN_BATCH:
            self._join(seqs, self.model.init_state(1), ids)
        else:
            self._prefilling.append(Prefill(seqs, ids))

    def _join(self, seqs: list[Sequence], state: torch.Tensor, forced: list[int]) -> None:
        n = len(seqs)
        state = state.expand(-1, n, -1)  # (R, n, H)
        logits = torch.zeros(n, self.model.config.vocab_size, device=self.device)  # unused until fed
        if self.seqs:
            self.state = torch.cat((self.state, state), dim=1)
            self.logits = torch.cat((self.logits, logits), dim=0)
        else:
            self.state, self.logits = state.contiguous(), logits
        self.seqs.extend(seqs)
        self.params = self.params + RowParams.of(seqs)
        self.forced.extend(list(forced) for _ in range(n))

    def _prefill_chunk(self) -> None:
        """Reads the next chunk of the oldest long prefix; it joins when one character is left."""
        prefill = self._prefilling[0]
        if all(s.finished for s in prefill.seqs):  # cancelled meanwhile
            self._prefilling.pop(0)
            return
        ids = prefill.ids
        end = min(prefill.position + PREFILL_CHUNK, len(ids) - 1)
        chunk = torch.tensor([ids[prefill.position : end]], dtype=torch.long, device=self.device)  # (1, T)
        _, prefill.state = self.model(chunk, prefill.state, last_only=True)  # (R, 1, H)
        prefill.position = end
        if end == len(ids) - 1:
            self._prefilling.pop(0)
            self._join(prefill.seqs, prefill.state, ids[-1:])

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Every generating row gets one character, every feeding row reads one prefix character;
        finished sequences leave. Returns those that finished."""
        self.sampled = 0
        if self._prefilling:
            self._prefill_chunk()
        if not self.seqs:
            return []
        inputs = [f[0] if f else 0 for f in self.forced]
        sampling = [r for r, f in enumerate(self.forced) if not f]
        finished = []
        self.sampled = len(sampling)
        if sampling:
            if len(sampling) == len(self.seqs):
                logits, seqs, params = self.logits, self.seqs, self.params
            else:
                logits = self.logits[torch.tensor(sampling, device=self.device)]
                seqs, params = [self.seqs[r] for r in sampling], self.params.take(sampling)
            id_to_char = self.vocab.id_to_char
            for r, seq, i in zip(sampling, seqs, sample_next(logits, seqs, params), strict=True):
                seq.append(id_to_char(i))
                inputs[r] = i
                if seq.finished:
                    finished.append(seq)
        for f in self.forced:
            if f:
                del f[0]
        if finished:
            self._keep([r for r, s in enumerate(self.seqs) if not s.finished], inputs)
        if not self.seqs:
            return finished
        ids = torch.tensor(inputs, dtype=torch.long, device=self.device)  # (B,)
        self.logits, self.state = decode.step(self.model, ids, self.state, self.dtype)  # (B, V), (R, B, H)
        return finished

    def _keep(self, rows: list[int], inputs: list[int] | None = None) -> None:
        if inputs is not None:
            inputs[:] = [inputs[r] for r in rows]
        self.seqs = [self.seqs[r] for r in rows]
        self.params = self.params.take(rows)
        self.forced = [self.forced[r] for r in rows]
        if not rows:
            self.state = self.logits = None
            return
        index = torch.tensor(rows, device=self.device)
        self.state = self.state.index_select(1, index)
        self.logits = self.logits.index_select(0, index)

    def remove(self, seqs: list[Sequence]) -> None:
        """Drops sequences whose caller went away (also from a prefix still being read)."""
        gone = {id(s) for s in seqs}
        self._prefilling = [p for p in self._prefilling if not any(id(s) in gone for s in p.seqs)]
        keep = [r for r, s in enumerate(self.seqs) if id(s) not in gone]
        if len(keep) != len(self.seqs):
            self._keep(keep)


def generate(
    model: CharRNN,
    vocab: Vocab,
    prefix: str,
    params: SamplingParams,
    n: int = 1,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Sequence]:
    """Completes `prefix` n times, on its own batch. Returns the finished sequences in index order."""
    seed = random_seed() if seed is None else seed
    seqs = [Sequence(params, seed, i) for i in range(n)]
    batch = DecodeBatch(model, vocab, dtype)
    batch.add(prefix, seqs)
    while batch.busy:
        batch.step()
    return seqs
