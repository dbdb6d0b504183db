"""Continuous batching: one thread runs every decoding step for all in-flight completions.

Requests join the running batch between steps (after their prefix is read) and leave the
moment they finish or their caller goes away, so concurrent requests share one forward pass
per step. Torch work happens only on this thread, never on the event loop. Results travel
back to the event loop with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from app.errors import NotReady, Overloaded
from app.lm.generate import DecodeBatch, SamplingParams, Sequence
from app.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class GenerationRequest:
    """One /complete call in the engine: its sequences and the channel back to its caller."""

    prefix: str
    params: SamplingParams
    n: int
    seed: int
    loaded: object  # service.LoadedModel: the model this request uses from start to end
    stream: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    seqs: list[Sequence] = field(default_factory=list)
    queue: asyncio.Queue | None = None  # ("text", [(index, text), ...]) | ("done", None) | ("error", msg)
    cancelled: bool = False  # set by the caller's side when it goes away

    def __post_init__(self) -> None:
        self.seqs = [Sequence(self.params, self.seed, i) for i in range(self.n)]
        self.queue = asyncio.Queue()

    def _send(self, kind: str, payload=None) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)


class Engine:
    def __init__(self, max_batch_size: int, max_queued: int, batching: bool = True, metrics: Metrics | None = None):
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.batching = batching
        self.metrics = metrics
        self._pending: deque[GenerationRequest] = deque()
        self._running: list[GenerationRequest] = []
        self._batches: dict[int, DecodeBatch] = {}  # one per model in use, keyed by id(model)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- caller side (event loop) -------------------------------------------------------------

    def submit(self, req: GenerationRequest) -> None:
        """Queues a request, or refuses it with 429 when the queue is full."""
        with self._wake:
            if len(self._pending) >= self.max_queued:
                raise Overloaded(
                    f"{len(self._pending)} requests are already waiting; try again shortly",
                    headers={"Retry-After": "1"},
                )
            if self._stopping:
                raise NotReady("the service is shutting down", headers={"Retry-After": "5"})
            self._pending.append(req)
            if self.metrics:
                self.metrics.queue_depth.set(len(self._pending))
            self._wake.notify()

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self._batches.values())

    @property
    def queued(self) -> int:
        return len(self._pending)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decode-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Lets the requests in flight finish (up to `timeout`), then stops the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._running:
                    if self._stopping:
                        return
                    self._wake.wait()
            try:
                self._admit()
                self._step()
            except Exception as exc:  # never leave a caller waiting on a dead engine
                log.exception("decoding step failed")
                for req in self._running + list(self._pending):
                    req._send("error", f"generation failed: {type(exc).__name__}")
                self._running.clear()
                self._pending.clear()
                self._batches.clear()

    def _admit(self) -> None:
        """Moves waiting requests into the batch while there is room (batching off: one at a time)."""
        while True:
            with self._wake:
                if not self._pending:
                    break
                req = self._pending[0]
                if req.cancelled:
                    self._pending.popleft()
                    self._finish(req, "cancelled")
                    continue
                rows = self.rows
                if self.batching:
                    fits = rows == 0 or rows + req.n <= self.max_batch_size
                else:
                    fits = not self._running
                if not fits:
                    break
                self._pending.popleft()
                if self.metrics:
                    self.metrics.queue_depth.set(len(self._pending))
            loaded = req.loaded
            batch = self._batches.get(id(loaded.model))
            if batch is None:
                batch = self._batches[id(loaded.model)] = DecodeBatch(loaded.model, loaded.vocab)
            batch.add(req.prefix, req.seqs)
            self._running.append(req)

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
        stepped = 0
        for key, batch in list(self._batches.items()):
            stepped += len(batch)
            batch.step()
            if not batch.seqs:
                del self._batches[key]
        still = []
        for req in self._running:
            if req.stream:
                deltas = [(s.index, t) for s in req.seqs if (t := s.take_new_text())]
                if deltas:
                    req._send("text", deltas)
            if req.finished:
                self._finish(req, "ok")
            else:
                still.append(req)
        self._running = still
        if self.metrics:
            self.metrics.generated_chars.inc(stepped)
            if stepped:
                self.metrics.decode_steps.inc()
            self.metrics.batch_size.set(self.rows)

    def _finish(self, req: GenerationRequest, outcome: str) -> None:
        if self.metrics:
            self.metrics.completions.labels(outcome).inc()
        if outcome == "ok":
            req._send("done")


def configure_torch_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
