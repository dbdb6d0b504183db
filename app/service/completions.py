"""Completions: a protocol-neutral request in, an engine request out, and the summary of its result."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from app.engine import Engine, GenerationRequest, LoadedModel
from app.errors import InvalidInput
from app.lm.constraint import CharAutomaton, RegexError, compile_regex
from app.lm.sampling import SamplingParams, random_seed
from app.lm.score import CharLogprob, char_logprobs
from app.lm.vocab import UNK_INDEX
from app.service.models import Models
from app.service.scoring import as_dict


@dataclass(frozen=True)
class CompletionRequest:
    """What every completion route asks of the service, whatever its wire format (app/api/protocol.py)."""

    prompts: list[str]
    params: SamplingParams  # logit_bias is filled in from `bias` once the model is known
    n: int = 1
    seed: int | None = None  # None: drawn, and reported back
    stream: bool = False
    model: str | None = None  # None: the active model
    regex: str | None = None
    bias: dict[str, float] | dict[int, float] = field(default_factory=dict)  # by character or by vocabulary id
    echo: bool = False  # with params.logprobs: also report the prompts' own log-probabilities
    tenant: str = ""  # who asks (a digest of the API key): cached prefix states are not shared across


@dataclass
class ChoiceResult:
    index: int
    prompt: str
    completion: str
    finish_reason: str
    logprobs: list[dict | None] | None  # per character: {"char", "logprob", "top": [{"char", "logprob"}]}


@dataclass
class Completion:
    model: str
    seed: int
    choices: list[ChoiceResult]
    unknown_chars: list[str]
    prompt_chars: int
    completion_chars: int


class Completions:
    def __init__(self, models: Models, engine: Engine):
        self.models = models
        self.engine = engine

    async def submit(self, request: CompletionRequest) -> GenerationRequest:
        """Resolves the model (loading it off the event loop if need be), compiles the regex and the
        logit bias for its vocabulary, and queues the completion (Overloaded when the queue is full)."""
        active = self.models.active
        if request.model is None or request.model == active.name:
            loaded = active  # no disk to read: no hop to a thread on the common path
        else:
            loaded = await asyncio.to_thread(self.models.get, request.model)
        constraint = await asyncio.to_thread(_constraint, request.regex, loaded) if request.regex else None
        params = request.params
        if request.bias:
            params = dataclasses.replace(params, logit_bias=_bias_ids(request.bias, loaded))
        gen = GenerationRequest(
            prompts=request.prompts,
            params=params,
            n=request.n,
            seed=random_seed() if request.seed is None else request.seed,
            loaded=loaded,  # one model for the whole request, even if a swap happens meanwhile
            constraint=constraint,
            stream=request.stream,
            loop=asyncio.get_running_loop(),
            tenant=request.tenant,
        )
        if request.echo and params.logprobs is not None:
            gen.prompt_logprobs = await asyncio.to_thread(_prompt_logprobs, loaded, request.prompts, params)
        self.engine.submit(gen)
        return gen

    @staticmethod
    def summary(gen: GenerationRequest, logprobs: bool = True) -> Completion:
        """The finished completion; `logprobs`=False leaves its log-probabilities out (a stream's
        final event: they went out with the text)."""
        vocab = gen.loaded.vocab
        choices = []
        for s in gen.seqs:
            prompt = gen.prompts[s.index // gen.n]
            chars = None
            if s.logprobs is not None and logprobs:
                chars = []
                if gen.prompt_logprobs is not None:  # echo: the prompt's own, character by character
                    echoed = gen.prompt_logprobs[s.index // gen.n]
                    chars = [as_dict(lp, vocab, c) for lp, c in zip(echoed, prompt, strict=True)]
                chars += [as_dict(lp, vocab) for lp in s.logprobs]
            choices.append(ChoiceResult(s.index, prompt, s.text, s.finish_reason or "length", chars))
        return Completion(
            model=gen.loaded.name,
            seed=gen.seed,
            choices=choices,
            unknown_chars=list(dict.fromkeys(c for p in gen.prompts for c in vocab.unknown_chars(p))),
            prompt_chars=sum(len(p) for p in gen.prompts),
            completion_chars=sum(len(s.text) for s in gen.seqs),
        )


def _constraint(pattern: str, loaded: LoadedModel) -> CharAutomaton:
    try:
        return compile_regex(pattern, loaded.vocab)
    except RegexError as exc:
        raise InvalidInput(f"regex: {exc}", "regex") from None


def _bias_ids(bias: dict, loaded: LoadedModel) -> tuple[tuple[int, float], ...]:
    """A logit bias by character (/complete) or by vocabulary id (/v1) as (id, bias) pairs; characters
    or ids the model does not have are a 422 naming them."""
    vocab = loaded.vocab
    pairs, unknown = [], []
    for key, value in bias.items():
        if isinstance(key, str):
            ids = vocab.encode(key)
            if len(key) != 1 or ids[0] == UNK_INDEX:
                unknown.append(repr(key))
                continue
            pairs.append((ids[0], float(value)))
        elif 0 < key < vocab.size:
            pairs.append((key, float(value)))
        else:
            unknown.append(str(key))
    if unknown:
        raise InvalidInput(
            f"logit_bias: not in model {loaded.name!r}'s vocabulary (see GET /vocab): {', '.join(unknown)}",
            "logit_bias",
        )
    return tuple(pairs)


def _prompt_logprobs(loaded: LoadedModel, prompts: list[str], params: SamplingParams) -> list[list[CharLogprob | None]]:
    """Each prompt's characters as the model reads them (echo): the same code as /score's per_char."""
    top = params.logprobs or 0
    return [char_logprobs(loaded.model, loaded.vocab, p, top) for p in prompts]
