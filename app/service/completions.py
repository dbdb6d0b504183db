"""Completions: a protocol-neutral request in, an engine request out, and the summary of its result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.engine import Engine, GenerationRequest
from app.lm.generate import SamplingParams, random_seed
from app.service.models import Models


@dataclass(frozen=True)
class CompletionRequest:
    """What every completion route asks of the service, whatever its wire format (app/api/protocol.py)."""

    prompt: str
    params: SamplingParams
    n: int = 1
    seed: int | None = None  # None: drawn, and reported back
    stream: bool = False


@dataclass
class Completion:
    model: str
    seed: int
    prefix: str
    choices: list[dict]
    unknown_chars: list[str]
    prefix_chars: int
    completion_chars: int


class Completions:
    def __init__(self, models: Models, engine: Engine):
        self.models = models
        self.engine = engine

    def submit(self, request: CompletionRequest) -> GenerationRequest:
        """Queues a completion on the engine (Overloaded when the queue is full). Call from the event loop."""
        gen = GenerationRequest(
            prefix=request.prompt,
            params=request.params,
            n=request.n,
            seed=random_seed() if request.seed is None else request.seed,
            loaded=self.models.active,  # one model for the whole request, even if a swap happens meanwhile
            stream=request.stream,
            loop=asyncio.get_running_loop(),
        )
        self.engine.submit(gen)
        return gen

    @staticmethod
    def summary(gen: GenerationRequest) -> Completion:
        return Completion(
            model=gen.loaded.name,
            seed=gen.seed,
            prefix=gen.prefix,
            choices=[
                {"index": s.index, "text": gen.prefix + s.text, "completion": s.text, "finish_reason": s.finish_reason}
                for s in gen.seqs
            ],
            unknown_chars=gen.loaded.vocab.unknown_chars(gen.prefix),
            prefix_chars=len(gen.prefix),
            completion_chars=sum(len(s.text) for s in gen.seqs),
        )
