"""Choosing each next character: sampling parameters, one completion's state, and the batched sampler.

Every row of a batch has its own parameters and its own random stream, and is computed on its own,
so a row's choice never depends on what else shares its batch. The order of the steps follows
llama.cpp's sampler chain: logit bias, repetition / presence / frequency penalties, the regex
mask, then temperature with top-k, top-p and min-p. Per-character log-probabilities are the
model's own distribution (temperature 1, before any of those steps), from the same function as
/score's per-character output (app/lm/score.py).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, fields

import numpy as np
import torch

from app.lm.constraint import CharAutomaton
from app.lm.score import CharLogprob, log_probs, top_alternatives
from app.lm.settings import setting
from app.lm.vocab import UNK_INDEX, Vocab

END = -1  # what a regex-constrained row draws when it ends at a complete match (an implicit end token)
MAX_LOGPROBS = 20  # alternatives a character may report


@dataclass(frozen=True)
class SamplingParams:
    max_new_chars: int = setting(100, 'characters to generate at most (then finish_reason "length")', ge=0)
    temperature: float = setting(0.0, "sampling temperature; 0 = greedy (argmax), as in the tutorial", ge=0.0)
    top_k: int = setting(0, "sample from the k likeliest characters only; 0 = off", ge=0)
    top_p: float = setting(1.0, "sample from the smallest set whose probability reaches p; 1 = off", gt=0.0, le=1.0)
    stop: tuple[str, ...] = setting((), 'generation ends (finish_reason "stop") at the first of these; not included')
    min_p: float = setting(
        0.0, "keep characters at least min_p times as likely as the likeliest; 0 = off", ge=0.0, le=1.0
    )
    repetition_penalty: float = setting(
        1.0, "divide positive logits (multiply negative ones) of recently seen characters by this; 1 = off", gt=0.0
    )
    repeat_last_n: int = setting(
        64, "characters of prefix and output the repetition penalty looks back on; 0 = none, -1 = all", ge=-1
    )
    presence_penalty: float = setting(
        0.0, "subtracted from the logit of every character already generated; 0 = off", ge=-2.0, le=2.0
    )
    frequency_penalty: float = setting(
        0.0, "subtracted from a character's logit once per time it was generated; 0 = off", ge=-2.0, le=2.0
    )
    logit_bias: tuple[tuple[int, float], ...] = setting((), "(vocabulary id, bias) pairs added to the logits")
    logprobs: int | None = setting(
        None, "report each generated character's log-probability and this many alternatives; None = off",
        ge=0, le=MAX_LOGPROBS,
    )  # fmt: skip

    @property
    def adjusts_logits(self) -> bool:
        """Whether logits change before sampling (bias or penalties): a per-row step."""
        return bool(
            self.logit_bias
            or (self.repetition_penalty != 1.0 and self.repeat_last_n != 0)
            or self.presence_penalty
            or self.frequency_penalty
        )


def random_seed() -> int:
    return secrets.randbits(32)


class Sequence:
    """One completion in progress: its characters, its random stream, what its penalties and regex
    track, its log-probabilities, and why it ended."""

    def __init__(
        self, params: SamplingParams, seed: int, index: int = 0, constraint: CharAutomaton | None = None
    ) -> None:
        self.params = params
        self.seed = seed
        self.index = index
        # one stream per (seed, index): choices of one request differ, and a sequence's draws
        # never depend on what else shares its batch
        self.rng = np.random.default_rng([seed, index])
        self._uniforms = np.empty(0)  # drawn in blocks: same values as one draw per call, far cheaper
        self._next_uniform = 0
        self.chars: list[str] = []
        self.logprobs: list[CharLogprob] | None = [] if params.logprobs is not None else None
        self.steps = 0  # characters sampled, including any that a stop string later removed
        self.finish_reason: str | None = None
        self._released = 0  # characters already handed to a stream
        self.streamed = False  # its characters go out as they come (its first one is awaited)
        self._stop_window = max((len(s) for s in params.stop), default=0)
        # the stop strings as ids, for the compiled paths to end the row at one (start() sets them;
        # one with a character outside the vocabulary can never be generated and is left out)
        self.stop_ids: list[list[int]] = []
        self.constraint = constraint
        self.state = constraint.initial if constraint is not None else 0  # of the regex automaton
        self.recent: deque[int] | None = None  # ids the repetition penalty looks at
        self.counts: np.ndarray | None = None  # (V,) how often each id was generated
        self.bias: np.ndarray | None = None  # (V,) logit bias
        if params.max_new_chars <= 0:
            self.finish_reason = "length"

    def start(self, prefix: str, vocab: Vocab) -> None:
        """Called when the sequence joins a batch: the prefix's last characters seed the repetition
        window (only they are encoded: a long prefix may be resumed from the prefix cache unread)."""
        p = self.params
        self.stop_ids = [ids for ids in map(vocab.encode, p.stop) if ids and UNK_INDEX not in ids]
        if p.repetition_penalty != 1.0 and p.repeat_last_n != 0:
            window = None if p.repeat_last_n < 0 else p.repeat_last_n
            self.recent = deque(vocab.encode(prefix[-window:] if window else prefix), maxlen=window)
        if p.presence_penalty or p.frequency_penalty:
            self.counts = np.zeros(vocab.size)
        if p.logit_bias:
            self.bias = np.zeros(vocab.size)
            for i, b in p.logit_bias:
                self.bias[i] += b

    def uniform(self) -> float:
        """The next number in [0, 1) of this sequence's own stream."""
        if self._next_uniform == len(self._uniforms):
            self._uniforms = self.rng.random(64)
            self._next_uniform = 0
        self._next_uniform += 1
        return self._uniforms[self._next_uniform - 1]

    def uniforms(self, n: int) -> np.ndarray:
        """The next n numbers of this sequence's stream: the same values as n calls of uniform()."""
        have = self._uniforms[self._next_uniform : self._next_uniform + n]
        self._next_uniform += len(have)
        if len(have) == n:
            return have
        return np.concatenate((have, self.rng.random(n - len(have))))

    def give_back(self, unused: np.ndarray) -> None:
        """Returns the last numbers that uniforms() gave and nobody used (a call of the compiled
        path that ended early): the stream goes on from the first of them, as if never drawn."""
        if len(unused):
            self._uniforms = np.concatenate((unused, self._uniforms[self._next_uniform :]))
            self._next_uniform = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def adjust(self, x: np.ndarray) -> None:
        """Bias and penalties on this row's logits (V,), in place (llama.cpp's and OpenAI's definitions)."""
        if self.bias is not None:
            x += self.bias
        if self.recent:
            seen = np.fromiter(set(self.recent), np.int64)
            penalty = self.params.repetition_penalty
            x[seen] = np.where(x[seen] > 0, x[seen] / penalty, x[seen] * penalty)
        if self.counts is not None:
            x -= self.params.frequency_penalty * self.counts + self.params.presence_penalty * (self.counts > 0)

    def append(self, char_id: int, char: str) -> None:
        """Takes the sampled character (or END) and decides whether the sequence is finished."""
        self.steps += 1
        if char_id == END:  # a regex match is complete and the draw chose to end it there
            self.finish_reason = "stop"
            return
        self.chars.append(char)
        if self.recent is not None:
            self.recent.append(char_id)
        if self.counts is not None:
            self.counts[char_id] += 1
        if self.constraint is not None:
            self.state = int(self.constraint.next_state[self.state, char_id])
            if self.constraint.dead[self.state]:
                self.finish_reason = "stop"  # a complete match that nothing can continue
                return
        if self._stop_window:
            tail = "".join(self.chars[-self._stop_window :])
            for stop in self.params.stop:
                if tail.endswith(stop):
                    del self.chars[len(self.chars) - len(stop) :]
                    if self.logprobs is not None:
                        del self.logprobs[len(self.chars) :]
                    self.finish_reason = "stop"
                    return
        if self.steps >= self.params.max_new_chars:
            self.finish_reason = "length"

    def extend(self, ids: list[int], chars: list[str], logprobs: list[CharLogprob] | None = None) -> int:
        """Takes several sampled characters at once (with their log-probabilities where the
        sequence reports them), ending exactly where append() one at a time would (a stop string,
        then the length limit; or, with a regex, where it ends: END). Returns how many of them it
        took."""
        assert (logprobs is None) == (self.logprobs is None)
        if self.constraint is not None:  # one at a time: its automaton's state, and its end
            for k, (i, char) in enumerate(zip(ids, chars, strict=True)):
                if logprobs is not None and self.logprobs is not None and i != END:
                    self.logprobs.append(logprobs[k])
                self.append(i, char)
                if self.finished:
                    return k + 1
            return len(ids)
        take = len(ids)
        which = ""
        if self._stop_window:
            carry = self.chars[max(0, len(self.chars) - self._stop_window + 1) :]
            text = "".join(carry) + "".join(chars)
            end = len(text) + 1
            for stop in self.params.stop:  # the earliest end wins; at the same end, the first listed
                at = text.find(stop)
                if at >= 0 and at + len(stop) < end:
                    end, which = at + len(stop), stop
            if which:
                take = end - len(carry)
        self.chars.extend(chars[:take])
        self.steps += take
        if self.recent is not None:
            self.recent.extend(ids[:take])
        if self.counts is not None:
            np.add.at(self.counts, ids[:take], 1)
        if self.logprobs is not None and logprobs is not None:
            self.logprobs.extend(logprobs[:take])
        if which:
            del self.chars[len(self.chars) - len(which) :]
            if self.logprobs is not None:
                del self.logprobs[len(self.chars) :]
            self.finish_reason = "stop"
        elif self.steps >= self.params.max_new_chars:
            self.finish_reason = "length"
        return take

    def _held_back(self) -> int:
        """Characters at the end that could still grow into a stop string: not safe to show yet."""
        if self.finished or not self._stop_window:
            return 0
        tail = "".join(self.chars[-self._stop_window :])
        return max(
            (k for stop in self.params.stop for k in range(1, len(stop)) if tail.endswith(stop[:k])),
            default=0,
        )

    def take_new(self) -> tuple[str, list[CharLogprob] | None]:
        """Text generated since the last call that no stop string can take back, and its characters'
        log-probabilities (None when they were not asked for)."""
        upto = len(self.chars) - self._held_back()
        if upto <= self._released:
            return "", [] if self.logprobs is not None else None
        new = "".join(self.chars[self._released : upto])
        logprobs = self.logprobs[self._released : upto] if self.logprobs is not None else None
        self._released = upto
        return new, logprobs

    def take_new_text(self) -> str:
        return self.take_new()[0]


@dataclass(frozen=True)
class RowParams:
    """The sampling parameters of a batch's rows as arrays, kept beside the rows so that a step
    does not gather them from every sequence again."""

    temperature: np.ndarray  # (B,) float64; 0 = greedy
    top_k: np.ndarray  # (B,) int64; 0 = off
    top_p: np.ndarray  # (B,) float64; 1 = off
    min_p: np.ndarray  # (B,) float64; 0 = off
    special: np.ndarray  # (B,) bool: bias, penalties, a regex or log-probabilities (a per-row step)
    stops: np.ndarray  # (B,) bool: stop strings

    @classmethod
    def of(cls, seqs: list[Sequence]) -> RowParams:
        n = len(seqs)
        return cls(
            np.fromiter((s.params.temperature for s in seqs), np.float64, n),
            np.fromiter((s.params.top_k for s in seqs), np.int64, n),
            np.fromiter((s.params.top_p for s in seqs), np.float64, n),
            np.fromiter((s.params.min_p for s in seqs), np.float64, n),
            np.fromiter(
                (s.params.adjusts_logits or s.constraint is not None or s.logprobs is not None for s in seqs), bool, n
            ),
            np.fromiter((bool(s.params.stop) for s in seqs), bool, n),
        )

    def take(self, rows) -> RowParams:
        return RowParams(*(getattr(self, f.name)[rows] for f in fields(self)))

    def __add__(self, other: RowParams) -> RowParams:
        return RowParams(*(np.concatenate((getattr(self, f.name), getattr(other, f.name))) for f in fields(self)))


def sample_next(logits: torch.Tensor, seqs: list[Sequence], params: RowParams | None = None) -> list[int]:
    """One id per row of logits (B, V), each row with its own parameters; never UNK (END where a
    regex-constrained row ends its match).

    Works in NumPy on the host: for the small vocabularies of character models its per-call
    cost is a few microseconds where each torch op costs several. Each row is computed on its
    own and its cumulative distribution is always taken in vocabulary order, so a row's choice
    does not depend on what else is in the batch. `params` are the rows' parameters as arrays
    (RowParams.of(seqs) when not given). Rows that asked for log-probabilities get them recorded.
    """
    params = RowParams.of(seqs) if params is None else params
    x = logits.detach().float().cpu().numpy().astype(np.float64)  # (B, V)
    x[:, UNK_INDEX] = -np.inf
    special: list[int] = np.flatnonzero(params.special).tolist() if params.special.any() else []
    ending: list[tuple[int, np.ndarray]] = []  # constrained rows at a complete match: (row, allowed)
    for r in special:
        seq = seqs[r]
        if seq.params.adjusts_logits:
            seq.adjust(x[r])
        if seq.constraint is not None:
            allowed = seq.constraint.allowed[seq.state]
            if seq.constraint.final[seq.state]:
                ending.append((r, allowed))  # draw over everything: a character that cannot continue ends
            else:
                x[r, ~allowed] = -np.inf
    chosen = x.argmax(axis=1)  # (B,)
    rows = np.flatnonzero(params.temperature > 0)
    if len(rows):
        chosen[rows] = _draw(x if len(rows) == len(seqs) else x[rows], [seqs[r] for r in rows], params.take(rows))
    for r, allowed in ending:
        if not allowed[chosen[r]]:
            chosen[r] = END
    if len(special):
        _record_logprobs(logits, seqs, special, chosen)
    return chosen.tolist()


def _draw(x: np.ndarray, seqs: list[Sequence], params: RowParams) -> np.ndarray:
    """Temperature, then top-k, top-p and min-p, then one uniform draw per row."""
    z = x / params.temperature[:, None]
    p = np.exp(z - z.max(axis=1, keepdims=True))  # (S, V) unnormalised; masked ids are exp(-inf) = 0
    vocab_size = p.shape[1]
    top_k = np.where(params.top_k > 0, params.top_k, vocab_size)
    filtered = np.flatnonzero((top_k < vocab_size) | (params.top_p < 1.0) | (params.min_p > 0.0))
    if len(filtered):  # zero what falls below each row's cut-off probability
        sub = p[filtered]
        ranked = -np.sort(-sub, axis=1)  # (F, V) likeliest first
        before = (np.cumsum(ranked, axis=1) - ranked) / ranked.sum(axis=1, keepdims=True)
        kept = np.minimum((before < params.top_p[filtered, None]).sum(axis=1), top_k[filtered])  # >= 1
        cutoff = ranked[np.arange(len(filtered)), kept - 1]
        cutoff = np.maximum(cutoff, params.min_p[filtered] * ranked[:, 0])  # min-p: relative to the likeliest
        p[filtered] = np.where(sub >= cutoff[:, None], sub, 0.0)
    cdf = np.cumsum(p, axis=1)  # (S, V)
    # a sampled row draws exactly one number per step, a greedy row none
    u = np.array([s.uniform() for s in seqs]) * cdf[:, -1]
    return np.argmax(cdf > u[:, None], axis=1)  # first id whose cumulative mass passes u


def _record_logprobs(logits: torch.Tensor, seqs: list[Sequence], rows, chosen: np.ndarray) -> None:
    wanted = [r for r in rows if seqs[r].logprobs is not None and chosen[r] != END]
    if not wanted:
        return
    lp = log_probs(logits[torch.as_tensor(wanted, device=logits.device)]).cpu().numpy()  # (W, V) float32
    for row, r in zip(lp, wanted, strict=True):
        seq = seqs[r]
        char_id = int(chosen[r])
        top = top_alternatives(row, seq.params.logprobs or 0)
        assert seq.logprobs is not None
        seq.logprobs.append(CharLogprob(char_id, float(row[char_id]), top))
