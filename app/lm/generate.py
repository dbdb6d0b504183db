"""Decoding: the prefix is read once, then every new character is one step that carries the state.

A DecodeBatch holds any number of sequences, each with its own sampling parameters and
random generator. Sequences join between steps and leave when they finish, so one forward
pass per step serves every request in the batch. A short prefix is fed through those same
batched steps (one character per step, nothing sampled); a long one is read in chunks by
the sequence model first. The tutorial instead re-ran the whole text for each new
character: O(n^2) for n characters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from app.lm import blas, cuda_graphs, decode, fastpath, fastpath_large
from app.lm.constraint import CharAutomaton
from app.lm.model import CharRNN, ModelConfig
from app.lm.prefix_cache import PrefixCache
from app.lm.sampling import RowParams, SamplingParams, Sequence, random_seed, sample_next
from app.lm.score import CharLogprob
from app.lm.vocab import UNK_INDEX, Vocab

FEED_IN_BATCH = 32  # prefixes up to this long are fed through the shared batched steps
PREFILL_CHUNK = 512  # longer prefixes are read this many characters per engine step
# On the CPU a batch decodes wholly in compiled code (app/lm/fastpath.py) while its step costs at
# most this many flops; a larger one takes a BLAS's batched products with compiled code around them
# (app/lm/fastpath_large.py), which win there (a BLAS's blocking; AMX tiles for bf16). Measured on
# the 2-core Xeon, 2x256 LSTM (2.1 MFLOP a character), one thread, time large/small path: with
# MKL's products from compiled code, fp32 2 rows 0.95-1.04, 3 rows 0.80-0.86, 4 rows 0.71-0.77;
# bf16 8 rows 1.01, 10 rows 0.78 (bf16 products take whole blocks of 64 rows); with torch's
# products a step at a time (no MKL), chars/s small/large fp32 4 rows 1.17, 6 rows 0.95, bf16 8 rows
# 1.12, 12 rows 0.83. Any batch of the default model stays small.
FAST_MAX_STEP_FLOPS = {
    torch.float32: (2 if blas.usable(torch.float32) else 5) * 2_100_000,
    torch.bfloat16: (8 if blas.usable(torch.bfloat16) else 9) * 2_100_000,
}
GUESSED_FLOPS_PER_SECOND = 2e10  # a first guess of one core's speed in a step (then measured)
LEARN_FROM_STEPS = 8  # calls of fewer steps teach the time of a step only where it was guessed too high
# One call of the compiled paths runs about this long. It ends sooner where a row ends at a stop
# string or its regex (its request is answered at once), where a streamed row that just joined has
# its first character, and once it has run JOIN_WAIT_SECONDS, where a row reaches its length or a
# request arrives to join (DecodeBatch.interrupt): neither a newcomer nor a finished request waits
# longer, and a large batch, where both happen every few steps, is not cut into calls of a step or
# two (measured with 64 clients: 8% fewer chars/s when any arrival ended a call).
TICK_SECONDS = 0.050
JOIN_WAIT_SECONDS = 0.010
# A call of the compiled paths records at most this many log-probabilities (characters and their
# alternatives, over all rows) before the host takes them
LOGPROBS_PER_CALL = 1 << 20


@dataclass
class Prefill:
    """A long prefix being read in chunks; its sequences join the batch when one character is left."""

    seqs: list[Sequence]  # the completions of this prefix
    ids: list[int]  # the prefix from where reading starts (after what the prefix cache kept)
    position: int = 0  # of those ids, read so far
    state: torch.Tensor | None = None  # (R, 1, H) after reading the kept characters and `position` ids
    text: str = ""  # the prefix, for the prefix cache
    namespace: object = None  # where the prefix cache keeps its state (None: not kept)


class DecodeBatch:
    """The sequences being decoded together, their recurrent state and their next-character logits.

    A row whose prefix is still being fed has `forced` ids left: its next inputs are those, and
    nothing is sampled for it until they run out.
    """

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocab,
        dtype: torch.dtype = torch.float32,
        prefix_cache: PrefixCache | None = None,
        compiled: bool = True,
        interrupt: np.ndarray | None = None,
    ):
        self.model = model
        self.vocab = vocab
        self.prefix_cache = prefix_cache if prefix_cache is not None and prefix_cache.enabled else None
        self.dtype = dtype  # of the steps' matrix products (see decode.step)
        self.device = model.fc.weight.device
        self.seqs: list[Sequence] = []
        self.params = RowParams.of([])  # the rows' sampling parameters, aligned with seqs
        self.forced: list[list[int]] = []  # per row: prefix ids still to feed
        self.state: torch.Tensor | None = None  # (R, B, H)
        self.logits: torch.Tensor | None = None  # (B, V)
        self._prefilling: list[Prefill] = []  # long prefixes being read, oldest first
        self.sampled = 0  # characters generated by the last step
        self.steps = 0  # decoding steps the last step() took
        # a GPU's steps are recorded as CUDA graphs (unless the reference path is asked for)
        self._graphs = compiled and cuda_graphs.supported(model)
        # the compiled paths, many steps a call (else one step a call): fastpath on the CPU, graphs on a GPU
        self._fast = compiled and (fastpath.supports(model, dtype) or self._graphs)
        # another thread sets interrupt[0] to end a call of the compiled paths between steps (the
        # engine, when a request arrives to join); the caller clears it
        self.interrupt = interrupt if interrupt is not None else np.zeros(1, np.int64)
        # a step of torch's path (rows that need the host between steps): on a GPU, a replayed graph
        self._torch_step = cuda_graphs.step if self._graphs else decode.step
        self._step_flops = model.config.flops_per_char()
        # of the compiled path: a first guess from the row's flops, then learnt as it runs
        self._seconds_per_step = self._step_flops / GUESSED_FLOPS_PER_SECOND

    def __len__(self) -> int:
        """Rows in the batch, counting sequences whose long prefix is still being read."""
        return len(self.seqs) + sum(len(p.seqs) for p in self._prefilling)

    @property
    def busy(self) -> bool:
        return bool(self.seqs or self._prefilling)

    def add(self, prefix: str, seqs: list[Sequence], namespace: object = None) -> None:
        """Queues `seqs` (n completions of one prefix) to join at the next step. A long prefix
        resumes from the prefix cache's longest kept start of it, under `namespace` (where one
        is given), and its state is kept there once read."""
        seqs = [s for s in seqs if not s.finished]
        if not seqs:
            return
        for seq in seqs:
            seq.start(prefix, self.vocab)
        if len(prefix) <= FEED_IN_BATCH:  # one id per character
            self._join(seqs, self.model.init_state(1), self.vocab.encode(prefix))
            return
        prefill = Prefill(seqs, [], text=prefix[:-1])
        read = 0  # characters whose state is kept: never encoded, never read again
        if self.prefix_cache is not None and namespace is not None:
            prefill.namespace = (namespace, self.dtype)
            kept = self.prefix_cache.longest(prefill.namespace, prefill.text)
            if kept is not None:
                read, prefill.state = kept.chars, kept.state
        prefill.ids = self.vocab.encode(prefix[read:])
        if len(prefill.ids) == 1:  # all but the last character kept: it joins at once
            assert prefill.state is not None  # a prefix this long is read unless kept
            self._join(seqs, prefill.state, prefill.ids)
            return
        self._prefilling.append(prefill)

    def _join(self, seqs: list[Sequence], state: torch.Tensor, forced: list[int]) -> None:
        n = len(seqs)
        # (R, n, H), always a copy: the batch's state is updated in place (the compiled path)
        state = state.expand(-1, n, -1).clone(memory_format=torch.contiguous_format)
        logits = torch.zeros(n, self.model.config.vocab_size, device=self.device)  # unused until fed
        if self.seqs:
            assert self.state is not None and self.logits is not None  # set while there are rows
            self.state = torch.cat((self.state, state), dim=1)
            self.logits = torch.cat((self.logits, logits), dim=0)
        else:
            self.state, self.logits = state, logits
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
            if prefill.namespace is not None and self.prefix_cache is not None:
                self.prefix_cache.put(prefill.namespace, prefill.text, prefill.state)
            self._join(prefill.seqs, prefill.state, ids[-1:])

    @torch.inference_mode()
    def step(self, max_steps: int = 1) -> list[Sequence]:
        """Every generating row gets one character, every feeding row reads one prefix character;
        finished sequences leave. Returns those that finished.

        With max_steps > 1 on the compiled paths (the CPU's, whatever the rows' sampling options;
        recorded CUDA graphs on a GPU, where no row has a regex, penalties, logit bias or
        log-probabilities), up to max_steps characters per row in one call (about TICK_SECONDS of
        work, at most cuda_graphs.MAX_STEPS on a GPU), and no more than the first row to end at a
        stop string or its regex needs. A streamed row that just joined ends the call at its first
        character, so that it streams at once; a row that reaches its length, and `interrupt`, end
        it at the next step once it has run JOIN_WAIT_SECONDS. While a long prefix is being read,
        one step per call between its chunks."""
        self.sampled = self.steps = 0
        if self._prefilling:
            self._prefill_chunk()
            max_steps = 1
        if not self.seqs:
            return []
        assert self.state is not None and self.logits is not None  # set while there are rows
        # a GPU's graphs take no bias, penalties, regex or log-probabilities (the CPU's paths take all)
        if self._fast and not (self._graphs and self.params.special.any()):
            return self._compiled_steps(max_steps)
        self.steps = 1
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
                seq.append(i, id_to_char(i) if i >= 0 else "")
                inputs[r] = max(i, 0)  # an ended row's input is never read
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
        self.logits, self.state = self._torch_step(self.model, ids, self.state, self.dtype)  # (B, V), (R, B, H)
        return finished

    def _compiled_steps(self, max_steps: int) -> list[Sequence]:
        """Up to max_steps steps for every row through a compiled path's decode_chunk (fastpath,
        fastpath_large or cuda_graphs; prefix characters still to read first): the same choices
        as the one-step path (the same numbers drawn from each row's stream), no Python per
        character."""
        assert self.state is not None and self.logits is not None
        seqs = self.seqs
        n_forced = np.fromiter((len(f) for f in self.forced), np.int64, len(seqs))
        forced = np.zeros((len(seqs), max(1, int(n_forced.max()))), np.int64)
        for r in np.flatnonzero(n_forced).tolist():
            forced[r, : n_forced[r]] = self.forced[r]
        remaining = np.fromiter((s.params.max_new_chars - s.steps for s in seqs), np.int64, len(seqs))
        ends = n_forced + remaining  # the step at which each row reaches its length
        p = self.params
        join_wait = int(JOIN_WAIT_SECONDS / self._seconds_per_step)
        # a row that reaches its length ends the call, once the call has run JOIN_WAIT_SECONDS (its
        # request is answered no later than a newcomer joins): a large batch, where some row ends
        # every step or two, is not cut into calls of a step each (each a return to Python, which
        # waits for the GIL while the event loop holds it)
        chunk = int(min(max_steps, max(ends.min(), min(join_wait, ends.max()))))
        fresh = np.fromiter((s.steps == 0 and s.streamed for s in seqs), bool, len(seqs))
        if fresh.any():  # a streamed row that just joined: this call ends at its first character
            chunk = min(chunk, int(n_forced[fresh].min()) + 1)
        chunk = max(1, min(chunk, int(TICK_SECONDS / self._seconds_per_step)))
        if self._graphs:  # a recorded length
            chunk = cuda_graphs.chunk_steps(chunk)
        extras = None
        if p.special.any():  # bias, penalties, a regex or log-probabilities (a CPU path: a GPU's take none)
            alternatives = max((s.params.logprobs or 0 for s in seqs if s.logprobs is not None), default=-1)
            if alternatives >= 0:  # a bounded record of log-probabilities
                chunk = min(chunk, max(1, LOGPROBS_PER_CALL // (len(seqs) * (1 + alternatives))))
            extras = _extras(seqs, self.model.config.vocab_size, chunk)
        limit = np.maximum(np.minimum(remaining, chunk - n_forced), 0)  # characters each row may sample
        uniforms = np.zeros((len(seqs), chunk))
        for drawing in np.flatnonzero((self.params.temperature > 0) & (limit > 0)).tolist():
            uniforms[drawing, : limit[drawing]] = seqs[drawing].uniforms(int(limit[drawing]))
        out = np.zeros((len(seqs), chunk), np.int64)
        start = time.perf_counter()
        work = fastpath.Chunk(
            forced, n_forced, p.temperature, p.top_k, p.top_p, p.min_p, uniforms, remaining, out, UNK_INDEX,
            self.interrupt, join_wait, extras=extras,
        )  # fmt: skip
        if p.stops.any():
            work.stops, work.stop_len, work.tail = _stop_ids(seqs, self.vocab)
        if self._graphs:
            self.steps = cuda_graphs.decode_chunk(self.model, self.dtype, self.state, self.logits, work)
        elif len(seqs) * self._step_flops <= FAST_MAX_STEP_FLOPS[self.dtype]:  # all in compiled code
            fw = fastpath.fast_weights(self.model, self.dtype)
            self.steps = fastpath.decode_chunk(fw, self.state.numpy(), self.logits.numpy(), work)
        else:  # torch's batched products, compiled code around them
            self.steps = fastpath_large.decode_chunk(self.model, self.dtype, self.state, self.logits, work)
        self._learn_step_time(time.perf_counter() - start, self.steps)
        taken = np.clip(self.steps - n_forced, 0, limit)  # fewer than drawn for where the call ended early
        for short in np.flatnonzero((taken < limit) & (self.params.temperature > 0)).tolist():
            seqs[short].give_back(uniforms[short, taken[short] : limit[short]])
        chars = self.vocab.by_id
        finished = []
        for r, (seq, f, row, n) in enumerate(zip(seqs, self.forced, out.tolist(), taken.tolist(), strict=True)):
            del f[: self.steps]
            if n:
                ids = row[:n]
                logprobs = _logprobs(extras, r, ids) if seq.logprobs is not None and extras is not None else None
                self.sampled += seq.extend(ids, [chars[i] if i >= 0 else "" for i in ids], logprobs)
                if seq.finished:
                    finished.append(seq)
        if finished:
            self._keep([r for r, s in enumerate(self.seqs) if not s.finished])
        return finished

    def _learn_step_time(self, seconds: float, steps: int) -> None:
        """Learns the time of a compiled step from a call of `steps` steps. A call of a few steps
        says little (its fixed cost swamps them), except that the guess was too high when even
        those took less: without that, one slow call (a cold start, a stall of the machine) would
        leave calls too short to ever correct it."""
        observed = seconds / max(steps, 1)
        if steps >= LEARN_FROM_STEPS or observed < self._seconds_per_step:
            self._seconds_per_step = 0.5 * self._seconds_per_step + 0.5 * observed

    def _keep(self, rows: list[int], inputs: list[int] | None = None) -> None:
        if inputs is not None:
            inputs[:] = [inputs[r] for r in rows]
        self.seqs = [self.seqs[r] for r in rows]
        self.params = self.params.take(rows)
        self.forced = [self.forced[r] for r in rows]
        if not rows:
            self.state = self.logits = None
            return
        assert self.state is not None and self.logits is not None  # set while there are rows
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


def _extras(seqs: list[Sequence], vocab_size: int, steps: int) -> fastpath.Extras:
    """fastpath.Extras for these rows, up to `steps` characters each: each row's logit bias, its
    penalties and what they have counted so far, and room for its log-probabilities."""
    rows = len(seqs)
    bias, counts = np.zeros((rows, vocab_size)), np.zeros((rows, vocab_size))
    seen = np.zeros((rows, vocab_size), np.int64)
    repetition, presence, frequency = np.ones(rows), np.zeros(rows), np.zeros(rows)
    window, n_logprobs = np.zeros(rows, np.int64), np.full(rows, -1, np.int64)
    rings: list[tuple[int, list[int]]] = []
    for r, seq in enumerate(seqs):
        if seq.bias is not None:
            bias[r] = seq.bias
        if seq.recent is not None:
            recent = list(seq.recent)
            repetition[r] = seq.params.repetition_penalty
            seen[r] = np.bincount(np.asarray(recent, np.int64), minlength=vocab_size)
            width = seq.recent.maxlen
            if width is not None and width <= len(recent) + steps:  # its oldest ids leave during this call
                window[r] = width
                rings.append((r, recent))
        if seq.counts is not None:
            presence[r], frequency[r] = seq.params.presence_penalty, seq.params.frequency_penalty
            counts[r] = seq.counts
        if seq.logprobs is not None:
            n_logprobs[r] = min(seq.params.logprobs or 0, vocab_size - 1)
    ring = np.zeros((rows, max(1, int(window.max()))), np.int64)
    ring_fill = np.zeros(rows, np.int64)
    for r, recent in rings:
        ring[r, : len(recent)] = recent
        ring_fill[r] = len(recent)
    alternatives = max(1, int(n_logprobs.max()))
    recorded = (rows, steps) if n_logprobs.max() >= 0 else (1, 1)
    on = np.fromiter(
        (s.params.adjusts_logits or s.logprobs is not None or s.constraint is not None for s in seqs), bool, rows
    )
    return fastpath.Extras(
        on, bias, repetition, window, ring, ring_fill, np.zeros(rows, np.int64), seen, presence, frequency, counts,
        n_logprobs, np.zeros(recorded, np.float32), np.zeros((*recorded, alternatives), np.int64),
        np.zeros((*recorded, alternatives), np.float32), *_automata(seqs, vocab_size), np.zeros(rows, bool),
    )  # fmt: skip


def _automata(
    seqs: list[Sequence], vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """fastpath.Extras's regex_state, next_state, allowed, final and dead: the rows' automata
    stacked (each once), their states numbered on from the one before."""
    state = np.full(len(seqs), -1, np.int64)
    at: dict[int, int] = {}  # id() of an automaton: its first state among the stacked ones
    parts: list[CharAutomaton] = []
    for r, seq in enumerate(seqs):
        if seq.constraint is None:
            continue
        if id(seq.constraint) not in at:
            at[id(seq.constraint)] = sum(a.num_states for a in parts)
            parts.append(seq.constraint)
        state[r] = at[id(seq.constraint)] + seq.state
    if not parts:
        return (
            state,
            np.zeros((1, vocab_size), np.int64),
            np.zeros((1, vocab_size), bool),
            np.zeros(1, bool),
            np.zeros(1, bool),
        )
    next_state = np.concatenate([np.where(a.allowed, a.next_state.astype(np.int64) + at[id(a)], -1) for a in parts])
    allowed = np.concatenate([a.allowed for a in parts])
    final = np.concatenate([a.final for a in parts])
    return state, next_state, allowed, final, np.concatenate([a.dead for a in parts])


def _logprobs(extras: fastpath.Extras, r: int, ids: list[int]) -> list[CharLogprob]:
    """Row r's log-probabilities of its characters `ids`, as a call with `extras` recorded them."""
    n, k = int(extras.n_logprobs[r]), len(ids)
    alternatives = zip(extras.top_ids[r, :k, :n].tolist(), extras.top_logprobs[r, :k, :n].tolist(), strict=True)
    return [
        CharLogprob(i, value, tuple(zip(top, top_values, strict=True)))
        for i, value, (top, top_values) in zip(ids, extras.logprob[r, :k].tolist(), alternatives, strict=True)
    ]


def _stop_ids(seqs: list[Sequence], vocab: Vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fastpath.Chunk's stops, stop_len and tail for these rows: each row's stop strings as ids,
    and its last characters before this call (as many as the longest stop string but one)."""
    longest = max((len(ids) for seq in seqs for ids in seq.stop_ids), default=1)
    slots = max(1, max(len(seq.stop_ids) for seq in seqs))
    stops = np.zeros((len(seqs), slots, longest), np.int64)
    stop_len = np.zeros((len(seqs), slots), np.int64)
    tail = np.full((len(seqs), max(1, longest - 1)), -1, np.int64)
    for r, seq in enumerate(seqs):
        if not seq.stop_ids:
            continue
        for s, ids in enumerate(seq.stop_ids):
            stops[r, s, : len(ids)] = ids
            stop_len[r, s] = len(ids)
        if longest > 1 and seq.chars:
            recent = vocab.encode("".join(seq.chars[1 - longest :]))
            tail[r, tail.shape[1] - len(recent) :] = recent
    return stops, stop_len, tail


def warm(model: CharRNN, dtype: torch.dtype) -> None:
    """Compiles (or loads from numba's disk cache) the CPU decoding paths for this dtype and builds
    the model's weights for them, so that the first request waits for neither. No-op off the CPU."""
    if fastpath.supports(model, dtype):
        fastpath.warm(model, dtype)
        fastpath_large.warm(model, dtype)


def precompile() -> None:
    """Compiles the decoding code for both dtypes into numba's disk cache (an image build runs
    this, so that a container on the same kind of CPU loads it instead of compiling)."""
    model = CharRNN(ModelConfig(vocab_size=4, cell="lstm", hidden_size=8)).eval()
    for dtype in (torch.float32, torch.bfloat16):
        warm(model, dtype)


def generate(
    model: CharRNN,
    vocab: Vocab,
    prefix: str,
    params: SamplingParams,
    n: int = 1,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    constraint: CharAutomaton | None = None,
    compiled: bool = True,
) -> list[Sequence]:
    """Completes `prefix` n times, on its own batch. Returns the finished sequences in index order.
    `compiled`=False keeps to the torch reference path (decode.step, one step per call)."""
    seed = random_seed() if seed is None else seed
    seqs = [Sequence(params, seed, i, constraint) for i in range(n)]
    batch = DecodeBatch(model, vocab, dtype, compiled=compiled)
    batch.add(prefix, seqs)
    while batch.busy:
        batch.step(max_steps=1 << 30)
    return seqs
