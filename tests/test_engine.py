"""The continuous-batching engine, driven directly."""

import asyncio
import sys

import pytest

from app.api.errors import error_response
from app.engine import GIL_SWITCH_SECONDS, Done, Engine, GenerationRequest, LoadedModel
from app.errors import Overloaded
from app.lm.generate import SamplingParams, generate
from app.lm.model import ModelConfig
from app.lm.train import build_model
from app.lm.vocab import Vocab


@pytest.fixture(scope="module")
def loaded():
    vocab = Vocab.from_text("abcdefghij ")
    model = build_model(ModelConfig(vocab_size=vocab.size, cell="gru", hidden_size=16), seed=2).eval()
    return LoadedModel("m", model, vocab, {})


async def run(engine, loaded, specs):
    loop = asyncio.get_running_loop()
    reqs = [
        GenerationRequest(prompts=[p], params=params, n=n, seed=seed, loaded=loaded, loop=loop)
        for p, params, n, seed in specs
    ]
    for r in reqs:
        engine.submit(r)
    for r in reqs:
        assert isinstance(await asyncio.wait_for(r.queue.get(), 30), Done)
    return reqs


@pytest.mark.parametrize(("batching", "workers"), [(True, 1), (True, 2), (False, 1)])
def test_concurrent_requests_get_the_same_text_as_alone(loaded, batching, workers):
    specs = [
        (f"ab{k % 7}", SamplingParams(max_new_chars=20 + k, temperature=0.9, top_k=k % 5, stop=("j",)), 1 + k % 3, k)
        for k in range(40)
    ]
    engine = Engine(max_batch_size=16, max_queued=100, batching=batching, workers=workers)
    engine.start()
    try:
        reqs = asyncio.run(run(engine, loaded, specs))
    finally:
        engine.stop()
    for req, (prefix, params, n, seed) in zip(reqs, specs, strict=True):
        alone = generate(loaded.model, loaded.vocab, prefix, params, n=n, seed=seed)
        assert [s.text for s in req.seqs] == [s.text for s in alone]


def test_a_full_queue_is_refused_with_retry_after(loaded):
    engine = Engine(max_batch_size=4, max_queued=2)  # not started: nothing leaves the queue

    async def fill():
        loop = asyncio.get_running_loop()
        for _ in range(2):
            engine.submit(GenerationRequest(["a"], SamplingParams(), 1, 0, loaded, loop=loop))
        with pytest.raises(Overloaded) as err:
            engine.submit(GenerationRequest(["a"], SamplingParams(), 1, 0, loaded, loop=loop))
        return err.value

    err = asyncio.run(fill())
    assert err.retry_after == 1
    response = error_response(err)  # as HTTP: 429 with Retry-After
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_never_exceeds_its_bound(loaded, workers):
    engine = Engine(max_batch_size=10, max_queued=100, workers=workers)
    seen, per_worker = [], []
    for worker in engine.workers:
        original = worker._step

        def spy(original=original, worker=worker):
            seen.append(engine.rows)
            per_worker.append(worker.rows)
            original()

        worker._step = spy
    engine.start()
    try:
        asyncio.run(run(engine, loaded, [("a", SamplingParams(max_new_chars=300), 2, k) for k in range(20)]))
    finally:
        engine.stop()
    assert max(seen) <= 10
    # and it does batch: a worker fills its share (10 rows over the workers) with requests of 2 rows
    share = 10 // workers
    assert max(per_worker) == share - share % 2


def test_requests_spread_over_workers(loaded):
    engine = Engine(max_batch_size=64, max_queued=100, workers=2)
    engine.start()
    try:
        reqs = asyncio.run(run(engine, loaded, [("ab", SamplingParams(max_new_chars=30), 1, k) for k in range(8)]))
    finally:
        engine.stop()
    alone = [
        generate(loaded.model, loaded.vocab, "ab", SamplingParams(max_new_chars=30), seed=k)[0].text for k in range(8)
    ]
    assert [r.seqs[0].text for r in reqs] == alone


def test_a_rows_logprobs_and_samplers_do_not_depend_on_its_batch(loaded):
    """32 concurrent requests with log-probabilities, penalties, bias, min-p and a regex: each gets
    the same characters and the same numbers as alone."""
    from app.lm.constraint import compile_regex

    automaton = compile_regex("[a-j ]+", loaded.vocab)
    specs = []
    for k in range(32):
        params = SamplingParams(
            max_new_chars=25,
            temperature=0.9,
            top_k=k % 6,
            min_p=0.02 * (k % 3),
            repetition_penalty=1.0 + 0.1 * (k % 4),
            presence_penalty=0.1 * (k % 2),
            frequency_penalty=0.05 * (k % 3),
            logit_bias=((1 + k % 5, 0.5),),
            logprobs=k % 4,
        )
        specs.append((f"ab{k % 7}", params, 1 + k % 2, k, automaton if k % 3 == 0 else None))
    engine = Engine(max_batch_size=64, max_queued=100, workers=1)
    engine.start()
    try:

        async def crowd():
            loop = asyncio.get_running_loop()
            reqs = [
                GenerationRequest(prompts=[p], params=sp, n=n, seed=seed, loaded=loaded, constraint=c, loop=loop)
                for p, sp, n, seed, c in specs
            ]
            for r in reqs:
                engine.submit(r)
            for r in reqs:
                assert isinstance(await asyncio.wait_for(r.queue.get(), 30), Done)
            return reqs

        reqs = asyncio.run(crowd())
    finally:
        engine.stop()
    for req, (prefix, params, n, seed, constraint) in zip(reqs, specs, strict=True):
        alone = generate(loaded.model, loaded.vocab, prefix, params, n=n, seed=seed, constraint=constraint)
        assert [s.text for s in req.seqs] == [s.text for s in alone]
        for crowded, single in zip(req.seqs, alone, strict=True):  # the same numbers, to float32 rounding
            assert (crowded.logprobs is None) == (single.logprobs is None)
            for a, b in zip(crowded.logprobs or [], single.logprobs or [], strict=True):
                assert a.id == b.id and a.logprob == pytest.approx(b.logprob, abs=1e-5)
                assert [i for i, _ in a.top] == [i for i, _ in b.top]
                assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=1e-5)


def test_a_request_that_fails_to_join_is_answered_not_stranded(loaded, monkeypatch):
    from app.engine import Failed
    from app.lm.generate import DecodeBatch

    def broken(self, prefix, seqs, namespace=None):
        raise RuntimeError("cannot join")

    monkeypatch.setattr(DecodeBatch, "add", broken)
    engine = Engine(max_batch_size=4, max_queued=10)
    engine.start()
    try:

        async def one():
            req = GenerationRequest(["ab"], SamplingParams(), 1, 0, loaded, loop=asyncio.get_running_loop())
            engine.submit(req)
            return await asyncio.wait_for(req.queue.get(), 10)

        assert isinstance(asyncio.run(one()), Failed)
    finally:
        engine.stop()


def test_a_request_joins_promptly_while_a_long_one_runs_many_steps_per_call(loaded):
    """The compiled path takes many steps per call only while nobody waits: a short request sent
    during a long completion starts at the next call and finishes long before it."""
    engine = Engine(max_batch_size=16, max_queued=10, workers=1)
    engine.start()

    async def both():
        loop = asyncio.get_running_loop()
        long_ = GenerationRequest(
            ["ab"], SamplingParams(max_new_chars=1_000_000, temperature=1.0), 1, 1, loaded, loop=loop
        )
        engine.submit(long_)
        await asyncio.sleep(0.05)  # running: many steps per call
        short = GenerationRequest(["ab"], SamplingParams(max_new_chars=5), 1, 2, loaded, loop=loop)
        engine.submit(short)
        assert isinstance(await asyncio.wait_for(short.queue.get(), 30), Done)
        running = long_.seqs[0].steps
        assert isinstance(await asyncio.wait_for(long_.queue.get(), 60), Done)
        return running, long_, short

    try:
        running, long_, short = asyncio.run(both())
    finally:
        engine.stop()
    assert running < 500_000  # the short one did not wait for the long one
    assert (
        short.seqs[0].text
        == generate(loaded.model, loaded.vocab, "ab", SamplingParams(max_new_chars=5), seed=2)[0].text
    )
    assert long_.seqs[0].steps == 1_000_000


def test_an_arriving_request_ends_a_long_call_at_its_next_step(loaded, monkeypatch):
    """However long a call of the compiled path may run, a request that can join ends it at the
    next step (the worker's interrupt flag), instead of waiting for the call to end."""
    from app import engine as engine_module
    from app.lm import generate as generate_module

    monkeypatch.setattr(generate_module, "TICK_SECONDS", 60.0)
    monkeypatch.setattr(engine_module, "MAX_STEPS_PER_TICK", 10**9)  # one call could run the whole request
    engine = Engine(max_batch_size=16, max_queued=10, workers=1)
    engine.start()
    total = 1_000_000

    async def both():
        loop = asyncio.get_running_loop()
        params = SamplingParams(max_new_chars=total, temperature=1.0)
        long_ = GenerationRequest(["ab"], params, 1, 1, loaded, loop=loop, stream=True)
        engine.submit(long_)
        while long_.seqs[0].steps == 0:  # its first character (streamed: a call of its own): now the long calls begin
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.005)
        short = GenerationRequest(["ab"], SamplingParams(max_new_chars=5), 1, 2, loaded, loop=loop)
        engine.submit(short)
        assert isinstance(await asyncio.wait_for(short.queue.get(), 30), Done)
        running = long_.seqs[0].steps
        while not isinstance(await asyncio.wait_for(long_.queue.get(), 60), Done):  # its text as it came
            pass
        return running, long_

    try:
        running, long_ = asyncio.run(both())
    finally:
        engine.stop()
    assert running < total // 2  # the call ended for the newcomer, not at its own end
    alone = generate(loaded.model, loaded.vocab, "ab", SamplingParams(max_new_chars=total, temperature=1.0), seed=1)
    assert long_.seqs[0].text == alone[0].text  # the numbers drawn for the steps not taken were given back


def test_a_started_engine_takes_the_gil_back_quickly():
    """Decode workers release the GIL around each torch or compiled call; Python's default 5 ms
    hand-over would keep them waiting behind the event loop."""
    engine = Engine(max_batch_size=4, max_queued=4, workers=1)
    engine.start()
    try:
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_SECONDS)
    finally:
        engine.stop()
