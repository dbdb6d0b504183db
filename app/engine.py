"""Continuous batching: decode worker threads run every decoding step for all in-flight completions.

Each worker thread keeps its own batch: requests join it between steps (after their prefix is
read) and leave the moment they finish or their caller goes away, so concurrent requests share
one forward pass per step. Torch work happens only on the workers, never on the event loop.
Results travel back to the event loop as typed messages, with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from app.cpus import usable_cpus
from app.errors import NotReady, Overloaded
from app.lm.constraint import CharAutomaton
from app.lm.generate import DecodeBatch
from app.lm.model import CharRNN
from app.lm.prefix_cache import PrefixCache
from app.lm.sampling import SamplingParams, Sequence
from app.lm.score import CharLogprob
from app.lm.vocab import Vocab
from app.metrics import Metrics

log = logging.getLogger(__name__)

GIL_SWITCH_SECONDS = 0.0005  # how long a thread holds the GIL while another waits for it (Python: 0.005)
MAX_STEPS_PER_TICK = 4096  # characters per row one engine tick may take (DecodeBatch.step bounds it by time too)


@dataclass(frozen=True)
class LoadedModel:
    """Everything one request needs, swapped as a single reference: no request sees half a swap."""

    name: str
    model: CharRNN
    vocab: Vocab
    meta: dict
    decode_dtype: torch.dtype = torch.float32  # of decoding's matrix products (settings.decode_precision)


# ---- messages from a worker back to the request's caller ------------------------------------


@dataclass(frozen=True)
class Delta:
    """New text of one sequence, with its characters' log-probabilities where they were asked for."""

    index: int
    text: str
    logprobs: list[CharLogprob] | None = None


@dataclass(frozen=True)
class TextDelta:
    """New text of some of the request's sequences."""

    deltas: list[Delta]


@dataclass(frozen=True)
class Done:
    """Every sequence has finished."""


@dataclass(frozen=True)
class Failed:
    """Decoding failed; the request will get nothing more."""

    message: str


Message = TextDelta | Done | Failed


@dataclass(eq=False)
class GenerationRequest:
    """One completion call in the engine: its sequences and the channel back to its caller.

    Each of `prompts` gets `n` sequences; sequence k belongs to prompt k // n (OpenAI's indexing)."""

    prompts: list[str]
    params: SamplingParams
    n: int
    seed: int
    loaded: LoadedModel  # the model this request uses from start to end
    constraint: CharAutomaton | None = None  # a regex compiled for this model's vocabulary
    stream: bool = False
    prompt_logprobs: list[list[CharLogprob | None]] | None = None  # echo: each prompt's own, per character
    tenant: str = ""  # whose request (an API key's digest): the prefix cache keeps tenants apart
    loop: asyncio.AbstractEventLoop | None = None
    seqs: list[Sequence] = field(default_factory=list)
    queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the caller's side when it goes away

    def __post_init__(self) -> None:
        self.seqs = [Sequence(self.params, self.seed, i, self.constraint) for i in range(self.n * len(self.prompts))]
        for seq in self.seqs:
            seq.streamed = self.stream

    @property
    def rows(self) -> int:
        return len(self.seqs)

    @property
    def dtype(self) -> torch.dtype:
        """Log-probabilities are reported in float32 whatever the decoding precision (as /score's)."""
        return torch.float32 if self.params.logprobs is not None else self.loaded.decode_dtype

    def send(self, message: Message) -> None:
        """From a worker thread: hands the message to the caller's event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)


class Engine:
    """Dispatches requests to decode workers: each worker is a thread with its own batches.

    Several workers, each with one torch thread, keep both cores of a small machine busy
    without OpenMP's lock-step: a worker held up by the event loop or a client does not stall
    the other's matrix products. A new request goes to the least loaded worker.
    """

    def __init__(
        self,
        max_batch_size: int,
        max_queued: int,
        batching: bool = True,
        metrics: Metrics | None = None,
        workers: int = 1,
        one_thread: bool = False,
        prefix_cache: PrefixCache | None = None,
        compiled: bool = True,
    ):
        workers = max(1, workers if batching else 1)  # batching off: one request at a time, in all
        self.max_queued = max_queued
        self.metrics = metrics
        per_worker = max(1, max_batch_size // workers)
        # one torch thread per worker: OpenMP's spinning threads would fight the event loop for cores
        one_thread = one_thread or workers > 1
        self.prefix_cache = prefix_cache
        self.workers = [
            _Worker(f"decode-{k}", per_worker, batching, metrics, one_thread, prefix_cache, compiled)
            for k in range(workers)
        ]
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False

    @property
    def running(self) -> bool:
        """The decode workers run and take requests."""
        return self._started and not self._stopping

    def submit(self, req: GenerationRequest) -> None:
        """Queues a request, or refuses it with 429 when the queue is full."""
        with self._lock:
            if self._stopping:
                raise NotReady("the service is shutting down", retry_after=5)
            waiting = self.queued
            if waiting >= self.max_queued:
                raise Overloaded(f"{waiting} requests are already waiting; try again shortly", retry_after=1)
            min(self.workers, key=lambda w: w.load).submit(req)

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.workers)

    @property
    def queued(self) -> int:
        return sum(len(w.pending) for w in self.workers)

    def start(self) -> None:
        # a decode worker drops the GIL around every torch and compiled call and waits to take it
        # back while the event loop runs Python: by default up to 5 ms each time. Handing it over
        # after 0.5 ms measured +9-10% at 64 clients (bench/serve.py, both dtypes, p99 460 -> 410 ms)
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        for w in self.workers:
            w.start()
        self._started = True

    def stop(self, timeout: float = 30.0) -> None:
        """Lets the requests in flight finish (up to `timeout`), then stops the threads."""
        with self._lock:
            self._stopping = True
        for w in self.workers:
            w.stop(timeout)


class _Worker:
    """One decoding thread: admits its requests between steps and steps all of them together."""

    def __init__(
        self,
        name: str,
        max_batch_size: int,
        batching: bool,
        metrics: Metrics | None,
        one_thread: bool,
        prefix_cache: PrefixCache | None = None,
        compiled: bool = True,
    ):
        self.name = name
        self.compiled = compiled
        self.prefix_cache = prefix_cache
        self.max_batch_size = max_batch_size
        self.batching = batching
        self.metrics = metrics
        self.one_thread = one_thread
        self.pending: deque[GenerationRequest] = deque()
        self._running: list[GenerationRequest] = []
        self._batches: dict[tuple[int, torch.dtype], DecodeBatch] = {}  # one per (id(model), dtype) in use
        self._wake = threading.Condition()
        # set when a request arrives that can join: the batch's call of the compiled paths ends at
        # its next step once it has run generate.JOIN_WAIT_SECONDS, so that a long call
        # (generate.TICK_SECONDS) never keeps a newcomer waiting longer
        self._interrupt = np.zeros(1, np.int64)
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def rows(self) -> int:
        return sum(len(b) for b in list(self._batches.values()))

    @property
    def load(self) -> int:
        return self.rows + sum(r.rows for r in list(self.pending))

    def submit(self, req: GenerationRequest) -> None:
        with self._wake:
            self.pending.append(req)
            if self.batching and self.rows + req.rows <= self.max_batch_size:  # it can join now
                self._interrupt[0] = 1
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        if self.one_thread:
            torch.set_num_threads(1)  # per thread: the workers are the parallelism
        while True:
            with self._wake:
                while not self.pending and not self._running:
                    if self._stopping:
                        return
                    self._wake.wait()
            try:
                self._interrupt[0] = 0  # before admitting: one that arrives after the admission ends the call
                self._admit()
                self._step()
            except Exception as exc:  # never leave a caller waiting on a dead worker
                log.exception("decoding step failed")
                with self._wake:
                    failed = self._running + list(self.pending)
                    self.pending.clear()
                for req in failed:
                    req.send(Failed(f"generation failed: {type(exc).__name__}"))
                self._running.clear()
                self._batches.clear()

    def _admit(self) -> None:
        """Moves waiting requests into the batch while there is room (batching off: one at a time)."""
        while True:
            with self._wake:
                if not self.pending:
                    break
                req = self.pending[0]
                if req.cancelled:
                    self.pending.popleft()
                    self._finish(req, "cancelled")
                    continue
                rows = self.rows
                if self.batching:
                    fits = rows == 0 or rows + req.rows <= self.max_batch_size
                else:
                    fits = not self._running
                if not fits:
                    break
                self.pending.popleft()
            loaded = req.loaded
            key = (id(loaded.model), req.dtype)  # one batch per model and precision
            batch = self._batches.get(key)
            if batch is None:
                batch = self._batches[key] = DecodeBatch(
                    loaded.model, loaded.vocab, req.dtype, self.prefix_cache, self.compiled, self._interrupt
                )
            self._running.append(req)  # before its rows join: a failure while joining still answers it
            for k, prompt in enumerate(req.prompts):
                batch.add(prompt, req.seqs[k * req.n : (k + 1) * req.n], namespace=(req.tenant, id(loaded.model)))

    def _step(self) -> None:
        # cancellation is read once per step: a flag set meanwhile is handled at the next step,
        # never half-way (which could strand a caller's sequences in the batch)
        gone = [r for r in self._running if r.cancelled]
        if gone:
            seqs = [s for r in gone for s in r.seqs]
            for batch in self._batches.values():
                batch.remove(seqs)
            for req in gone:
                self._finish(req, "cancelled")
            self._running = [r for r in self._running if r not in gone]
        stepped = steps = 0
        # many characters per call (the CPU's compiled paths; see DecodeBatch.step): a call ends
        # where a row reaches its length (so that a request still waiting for room joins then), or
        # when a request arrives that can join (submit sets the interrupt; see generate.JOIN_WAIT_SECONDS)
        for key, batch in list(self._batches.items()):
            batch.step(MAX_STEPS_PER_TICK)
            stepped += batch.sampled
            steps = max(steps, batch.steps)
            if not batch.busy:
                del self._batches[key]
        still = []
        for req in self._running:
            if req.stream:
                deltas = [Delta(s.index, t, lp) for s in req.seqs for t, lp in (s.take_new(),) if t]
                if deltas:
                    req.send(TextDelta(deltas))
            if req.finished:
                self._finish(req, "ok")
            else:
                still.append(req)
        self._running = still
        if self.metrics and stepped:
            self.metrics.generated_chars.inc(stepped)
            self.metrics.decode_steps.inc(steps)

    def _finish(self, req: GenerationRequest, outcome: str) -> None:
        if self.metrics:
            self.metrics.completions.labels(outcome).inc()
        if outcome == "ok":
            req.send(Done())


def configure_torch_threads(threads: int) -> None:
    """threads > 0: that many. 0: torch's default (one per core), but no more than the CPUs this
    process may use: in a container limited to 2 CPUs on a 64-core node, torch would otherwise
    start 64 threads and be throttled."""
    if threads <= 0:
        threads = min(torch.get_num_threads(), usable_cpus())
    torch.set_num_threads(threads)
