"""The compiled decoding path against the torch reference (decode.step and the one-step sampler)."""

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from app.lm import blas, decode, fastpath, fastpath_large
from app.lm import generate as generate_module
from app.lm.constraint import compile_regex
from app.lm.generate import DecodeBatch, generate
from app.lm.model import CharRNN, ModelConfig
from app.lm.prefix_cache import PrefixCache
from app.lm.sampling import RowParams, SamplingParams, Sequence, _draw
from app.lm.train import build_model
from app.lm.vocab import Vocab
from tests.lm.conftest import CASES

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(("layers", "encoding"), [(1, "one_hot"), (3, "embedding")])
def test_a_compiled_step_matches_the_reference_step(cell, dtype, layers, encoding):
    cfg = ModelConfig(vocab_size=23, cell=cell, hidden_size=40, num_layers=layers, encoding=encoding)
    torch.manual_seed(3)
    model = CharRNN(cfg).eval()
    ids = torch.randint(1, 23, (5,))
    state = torch.randn(cfg.state_rows, 5, 40) * 0.5
    ref_logits, ref_state = decode.step(model, ids, state, dtype)
    logits, new_state = fastpath.step(model, ids, state, dtype)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(new_state, ref_state, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_compiled_steps_stay_with_the_reference_over_many_steps(cell, dtype):
    """60 steps carrying the state: rounding does not build up (the products in bf16 included)."""
    cfg = ModelConfig(vocab_size=30, cell=cell, hidden_size=64, num_layers=2, encoding="embedding")
    torch.manual_seed(0)
    model = CharRNN(cfg).eval()
    ids = torch.randint(1, 30, (3, 60))
    ref = fast = model.init_state(3)
    for t in range(ids.shape[1]):
        ref_logits, ref = decode.step(model, ids[:, t], ref, dtype)
        fast_logits, fast = fastpath.step(model, ids[:, t], fast, dtype)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: a product may round to the next bf16
    assert (fast_logits - ref_logits).abs().max() < tolerance
    assert (fast - ref).abs().max() < tolerance


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_a_row_gets_exactly_the_same_numbers_alone_or_batched(dtype):
    cfg = ModelConfig(vocab_size=30, cell="lstm", hidden_size=72, num_layers=2, encoding="embedding")
    torch.manual_seed(1)
    model = CharRNN(cfg).eval()
    ids = torch.randint(1, 30, (9,))
    state = torch.randn(cfg.state_rows, 9, 72) * 0.5
    batched, batched_state = fastpath.step(model, ids, state, dtype)
    for row in (0, 4, 8):
        alone, alone_state = fastpath.step(model, ids[row : row + 1], state[:, row : row + 1], dtype)
        assert torch.equal(alone[0], batched[row])
        assert torch.equal(alone_state[:, 0], batched_state[:, row])


def test_bf16_weights_are_read_as_two_bytes():
    cfg = ModelConfig(vocab_size=30, cell="lstm", hidden_size=64, num_layers=2, encoding="embedding")
    model = CharRNN(cfg).eval()
    assert fastpath.fast_weights(model, torch.bfloat16).wh.dtype == np.uint16
    assert fastpath.fast_weights(model, torch.float32).wh.dtype == np.float32


def test_the_compiled_weights_follow_parameter_updates():
    cfg = ModelConfig(vocab_size=10, cell="gru", hidden_size=16, num_layers=2, encoding="embedding")
    model = CharRNN(cfg).eval()
    ids, state = torch.tensor([3]), model.init_state(1)
    before, _ = fastpath.step(model, ids, state)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    after, _ = fastpath.step(model, ids, state)
    torch.testing.assert_close(after, before + 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_compiled_path_chooses_what_the_reference_path_chooses(trained, case, dtype):
    params = CASES[case]
    for seed in (1, 2):
        ref = generate(trained.model, trained.vocab, "the ", params, n=2, seed=seed, dtype=dtype, compiled=False)
        fast = generate(trained.model, trained.vocab, "the ", params, n=2, seed=seed, dtype=dtype)
        assert [(s.text, s.finish_reason, s.steps) for s in fast] == [(s.text, s.finish_reason, s.steps) for s in ref]
    if case == "stops":
        assert any(s.finish_reason == "stop" for s in fast)


@pytest.fixture(params=["mkl", "torch"])
def products(request, monkeypatch):
    """The large batch path's two ways to its products: MKL's from compiled code (one call of all
    the steps, where blas.usable says so), and torch's calls a step at a time (elsewhere)."""
    if request.param == "mkl" and not blas.available():
        pytest.skip("this torch has no MKL")
    usable = request.param == "mkl"
    monkeypatch.setattr(blas, "usable", lambda dtype: usable)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(("layers", "encoding"), [(1, "one_hot"), (3, "embedding")])
def test_the_large_batch_path_steps_like_the_reference(cell, dtype, layers, encoding, products):
    """fastpath_large: MKL's or torch's products, compiled cells and sampler; greedy over several
    steps (the reference's bf16 products are the same as the path's: decode.bf16_product)."""
    cfg = ModelConfig(vocab_size=30, cell=cell, hidden_size=64, num_layers=layers, encoding=encoding)
    model = build_model(cfg, seed=0).eval()
    rows, n = 9, 6
    gen = torch.Generator().manual_seed(0)
    state = torch.randn(cfg.state_rows, rows, 64, generator=gen) * 0.5
    ids = torch.randint(1, 30, (rows,), generator=gen)
    with torch.inference_mode():
        fast_state, out = state.clone(), np.zeros((rows, n), np.int64)
        chunk = fastpath.Chunk(
            ids.numpy()[:, None].copy(), np.ones(rows, np.int64), np.zeros(rows), np.zeros(rows, np.int64),
            np.ones(rows), np.zeros(rows), np.zeros((rows, n)), np.full(rows, n - 1, np.int64), out, 0,
        )  # fmt: skip
        steps = fastpath_large.decode_chunk(model, dtype, fast_state, torch.zeros(rows, 30), chunk)
        ref_state, chosen = state, []
        for _ in range(n - 1):  # the prefix character, then every sampled one but the last
            logits, ref_state = decode.step(model, ids, ref_state, dtype)
            logits[:, 0] = -torch.inf  # UNK is never drawn
            ids = logits.argmax(1)
            chosen.append(ids)
    assert steps == n
    assert (out[:, : n - 1] == torch.stack(chosen, 1).numpy()).all()
    # bf16: an input a float32 ulp apart can round to the neighbouring bf16 value, and a product with
    # it to another bf16 (seen: 5e-4 after 5 steps of 3 layers)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(fast_state, ref_state, rtol=1e-5, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_the_large_batch_path_gives_a_row_the_same_numbers_in_any_batch(dtype, products):
    """Bit for bit, state and logits, with one torch thread as the service decodes: a bf16 product
    of 512 inputs by torch.mm rounded a row differently at 33 rows than at 64 (oneDNN picks its
    kernel by the rows), so bf16 products run on blocks of 64 rows; the output layer as a
    transposed view rounded 6-10 rows otherwise than more."""
    cfg = ModelConfig(vocab_size=79, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    model = build_model(cfg, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(cfg.state_rows, 130, 256, generator=gen) * 0.5
    ids = torch.randint(1, 79, (130,), generator=gen).numpy()
    n = 12

    def run(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        state, logits = start[:, :rows].clone(), torch.zeros(rows, 79)
        chunk = fastpath.Chunk(
            ids[:rows, None].copy(), np.ones(rows, np.int64), np.zeros(rows), np.zeros(rows, np.int64),
            np.ones(rows), np.zeros(rows), np.zeros((rows, n)), np.full(rows, n, np.int64),
            np.zeros((rows, n), np.int64), 0,
        )  # fmt: skip
        with torch.inference_mode():
            assert fastpath_large.decode_chunk(model, dtype, state, logits, chunk) == n
        return state, logits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        crowd_state, crowd_logits = run(130)
        for rows in (6, 7, 9, 17, 20, 33, 40, 48, 63, 64, 65, 100):
            state, logits = run(rows)
            assert torch.equal(state, crowd_state[:, :rows]) and torch.equal(logits, crowd_logits[:rows]), rows
    finally:
        torch.set_num_threads(threads)


def _count_calls(monkeypatch) -> dict[str, int]:
    """The calls of each CPU path's decode_chunk (small: fastpath, large: fastpath_large), counted from now."""
    calls = {"small": 0, "large": 0}
    for name, module in (("small", fastpath), ("large", fastpath_large)):

        def counted(*args, name=name, decode_chunk=module.decode_chunk):
            calls[name] += 1
            return decode_chunk(*args)

        monkeypatch.setattr(module, "decode_chunk", counted)
    return calls


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["greedy", "t0.8_topk5", "t1.2_topp0.9_minp", "stops"])
def test_the_large_batch_path_chooses_what_the_reference_path_chooses(trained, case, dtype, monkeypatch):
    """Rows of different lengths leave the batch as they finish: it starts on the large-batch path
    and ends on the small one; every row as torch's one-step path would have it."""
    params = [dataclasses.replace(CASES[case], max_new_chars=n) for n in (40, 90, 300, 150, 300, 7)]
    monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, dtype, 3 * trained.model.config.flops_per_char())
    paths = _count_calls(monkeypatch)

    def run(compiled: bool) -> list[tuple[str, str | None, int]]:
        batch = DecodeBatch(trained.model, trained.vocab, dtype, compiled=compiled)
        seqs = [Sequence(p, seed=9, index=i) for i, p in enumerate(params)]
        batch.add("the ", seqs)
        while batch.busy:
            batch.step(max_steps=37)
        return [(s.text, s.finish_reason, s.steps) for s in seqs]

    assert run(True) == run(False)
    assert paths["large"] > 0
    assert paths["small"] > 0 or case == "stops"  # stop strings may end every row while the batch is large


# a logit bias, penalties and log-probabilities: sampled in compiled code on the CPU
EXTRAS = {  # name: (parameters, regex)
    "logprobs": (SamplingParams(max_new_chars=300, logprobs=3), None),
    "repetition_window_logprobs0": (
        SamplingParams(max_new_chars=300, temperature=1.0, repetition_penalty=1.3, repeat_last_n=8, logprobs=0),
        None,
    ),
    "greedy_repetition_window": (SamplingParams(max_new_chars=300, repetition_penalty=1.8, repeat_last_n=5), None),
    "presence_frequency_bias": (
        SamplingParams(
            max_new_chars=300, temperature=0.9, presence_penalty=0.5, frequency_penalty=0.3,
            logit_bias=((3, 2.0), (5, -1.0)),
        ),
        None,
    ),
    "all_stops": (
        SamplingParams(
            max_new_chars=300, temperature=1.0, top_k=5, repetition_penalty=1.2, repeat_last_n=-1,
            presence_penalty=0.2, logit_bias=((7, 0.5),), logprobs=20, stop=("og", "ump"),
        ),
        None,
    ),
    # a regex: END at a full match (the likely "." cannot continue it), and a dead end (nothing can follow)
    "regex_end_logprobs": (SamplingParams(max_new_chars=300, temperature=1.0, logprobs=2), "[a-z ]+"),
    "regex_dead_end": (SamplingParams(max_new_chars=300), "(quick|lazy) (brown|dog) (fox|jumps)"),
    "regex_penalties": (
        SamplingParams(max_new_chars=300, temperature=0.8, top_p=0.9, repetition_penalty=1.3, frequency_penalty=0.2),
        "([a-z]+ )+[a-z]+\\.",
    ),
}  # fmt: skip


def _sequences(trained, cases, seed: int) -> list[Sequence]:
    """A Sequence for each (parameters, regex) of `cases`, seeded apart by index."""
    return [
        Sequence(p, seed=seed, index=i, constraint=compile_regex(rx, trained.vocab) if rx else None)
        for i, (p, rx) in enumerate(cases)
    ]


def _outcome(seqs: list[Sequence]) -> list[tuple]:
    """What each sequence generated: its text, why it ended, its steps, and its characters' ids
    and alternatives' ids where it reports log-probabilities (their values: _logprob_values)."""
    return [
        (
            s.text,
            s.finish_reason,
            s.steps,
            None if s.logprobs is None else [(c.id, [i for i, _ in c.top]) for c in s.logprobs],
        )
        for s in seqs
    ]


def _logprob_values(seqs: list[Sequence]) -> np.ndarray:
    return np.array([v for s in seqs for c in s.logprobs or () for v in (c.logprob, *(v for _, v in c.top))])


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["small", "large", "large_torch_products"])
def test_bias_penalties_regex_and_logprobs_are_what_the_reference_path_gives(trained, path, dtype, monkeypatch):
    """One batch of rows with different extras (a regex among them) and lengths, and plain rows
    beside them, on either compiled path (the large one with MKL's products or torch's), against
    torch's one-step path: the same text, and the same log-probabilities and alternatives (to float
    rounding)."""
    lengths = (120, 40, 250, 300, 200, 300, 300, 150)
    cases = [(dataclasses.replace(p, max_new_chars=n), rx) for (p, rx), n in zip(EXTRAS.values(), lengths, strict=True)]
    cases += [(dataclasses.replace(CASES["t1.0"], max_new_chars=90), None), (CASES["greedy"], None)]
    if path == "large_torch_products":
        monkeypatch.setattr(blas, "usable", lambda dtype: False)
        path = "large"
    if path == "large":
        monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, dtype, 3 * trained.model.config.flops_per_char())
    calls = _count_calls(monkeypatch)

    def run(compiled: bool, seed: int) -> list[Sequence]:
        batch = DecodeBatch(trained.model, trained.vocab, dtype, compiled=compiled)
        seqs = _sequences(trained, cases, seed)
        batch.add("the ", seqs)
        while batch.busy:
            batch.step(max_steps=23)
        return seqs

    for seed in (1, 2):
        fast, ref = run(True, seed), run(False, seed)
        for row, (got, want) in enumerate(zip(_outcome(fast), _outcome(ref), strict=True)):
            assert got == want, (row, seed)
        np.testing.assert_allclose(_logprob_values(fast), _logprob_values(ref), rtol=1e-4, atol=1e-4)
        assert len(_logprob_values(fast)) > 300
        assert [s.finish_reason for s in fast[4:7]] == ["stop"] * 3
        assert fast[5].steps == len(fast[5].text) + 1  # END: a step, no character
        assert fast[6].steps == len(fast[6].text)  # a dead end: its last character ends it
    assert calls[path] > 0


@pytest.mark.parametrize("case", list(EXTRAS))
def test_a_row_with_extras_is_the_same_alone_or_in_a_crowd(trained, case):
    """The extras are per row: a row's text and log-probabilities do not depend on its batch."""
    params, regex = EXTRAS[case]
    constraint = compile_regex(regex, trained.vocab) if regex else None
    alone = generate(trained.model, trained.vocab, "the ", params, seed=5, constraint=constraint)
    batch = DecodeBatch(trained.model, trained.vocab)
    crowd = _sequences(trained, [EXTRAS[case], *EXTRAS.values(), (CASES["t1.0"], None)], seed=5)
    batch.add("the ", crowd)
    while batch.busy:
        batch.step(max_steps=31)
    assert _outcome(crowd[:1]) == _outcome(alone)
    np.testing.assert_array_equal(_logprob_values(crowd[:1]), _logprob_values(alone))


WARMED_PROCESS = """
import dataclasses, sys
import torch
from app.lm import fastpath, fastpath_large
from app.lm import generate as g
from app.lm.constraint import compile_regex
from app.lm.model import ModelConfig
from app.lm.sampling import SamplingParams, Sequence
from app.lm.train import build_model
from app.lm.vocab import Vocab

vocab = Vocab.from_text("the quick brown fox jumps over the lazy dog.")
model = build_model(ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=16, num_layers=2), seed=0).eval()
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
g.warm(model, dtype)
compiled = [fastpath._decode_chunk, fastpath._choose, fastpath_large._layer, fastpath_large._decode_chunk_blas]
before = [len(f.signatures) for f in compiled]
options = [
    (SamplingParams(max_new_chars=30, temperature=1.0, logprobs=3, repetition_penalty=1.2, repeat_last_n=4), None),
    (SamplingParams(max_new_chars=30, logit_bias=((3, 1.0),), presence_penalty=0.5, frequency_penalty=0.5), None),
    (SamplingParams(max_new_chars=30, temperature=0.7, top_k=3), "[a-z ]+"),
    (SamplingParams(max_new_chars=30), None),
]
for large in (False, True):
    if large:
        g.FAST_MAX_STEP_FLOPS[dtype] = 2 * model.config.flops_per_char()
    for rows in (options, options[:1], options[2:3]):  # a regex among the rows, or none
        batch = g.DecodeBatch(model, vocab, dtype)
        seqs = [Sequence(p, 1, i, compile_regex(rx, vocab) if rx else None) for i, (p, rx) in enumerate(rows)]
        batch.add("the ", seqs)
        while batch.busy:
            batch.step(max_steps=10)
print([len(f.signatures) for f in compiled], before)
assert [len(f.signatures) for f in compiled] == before
"""


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_warming_compiles_what_requests_with_extras_run(dtype):
    """numba compiles per argument types: warm() must cover the types of every call a request
    makes, extras included, or the first such request would wait for a compile (seconds) with
    every row of its batch. In a fresh process: in this one, other tests compiled them already."""
    done = subprocess.run(
        [sys.executable, "-c", WARMED_PROCESS, dtype], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


class _Drawn:
    """A sequence whose next uniform number is given."""

    def __init__(self, u: float):
        self.u = u

    def uniform(self) -> float:
        return self.u


@pytest.mark.parametrize("vocab_size", [3, 79, fastpath.RANK_BY_COUNTING + 1, 300])
def test_the_compiled_sampler_draws_what_the_python_sampler_draws(vocab_size):
    """Both orderings of the compiled sampler (counting for small vocabularies, a sort for large
    ones) against sampling._draw: fresh logits with ties and a masked character, every filter."""
    rng = np.random.default_rng(vocab_size)
    x = np.empty(vocab_size)
    ranked = np.empty(vocab_size)
    settings = [(1.0, 0, 1.0, 0.0), (0.8, 2, 1.0, 0.0), (1.3, 0, 0.6, 0.0), (0.7, 0, 1.0, 0.3), (1.0, 5, 0.9, 0.05)]
    for trial in range(300):
        logits = rng.normal(0, 3, vocab_size).astype(np.float32)
        if trial % 3 == 0:  # ties: a few distinct values only
            logits = np.round(logits).astype(np.float32)
        for temperature, top_k, top_p, min_p in settings:
            u = float(rng.random())
            chosen = fastpath._sample_row(logits, temperature, top_k, top_p, min_p, u, 0, x, ranked)
            masked = logits.astype(np.float64)[None]
            masked[0, 0] = -np.inf  # the UNK index, never drawn
            no = np.zeros(1, bool)
            params = RowParams(np.array([temperature]), np.array([top_k]), np.array([top_p]), np.array([min_p]), no, no)
            assert chosen == int(_draw(masked, [_Drawn(u)], params)[0])  # type: ignore[list-item]


def test_a_compiled_batch_takes_many_steps_per_call_and_one_when_asked(trained):
    batch = DecodeBatch(trained.model, trained.vocab)
    seqs = [Sequence(SamplingParams(max_new_chars=200, temperature=0.9), seed=5, index=i) for i in range(3)]
    batch.add("a", seqs)
    batch.step()  # feeds the prefix's character
    batch.step(max_steps=1)
    assert batch.steps == 1 and batch.sampled == 3
    batch.step(max_steps=50)
    assert batch.steps == 50 and batch.sampled == 150
    assert all(s.steps == 51 for s in seqs)


def test_one_slow_call_does_not_leave_the_calls_short_for_good(trained):
    """A stall (a cold start, a busy machine) makes one call's steps look slow: the calls that
    follow are short, and must still learn their way back to full length."""
    batch = DecodeBatch(trained.model, trained.vocab)
    batch.add("a", [Sequence(SamplingParams(max_new_chars=100_000, temperature=0.9), seed=5)])
    batch.step()
    batch._seconds_per_step = generate_module.TICK_SECONDS  # as after a call that stalled: one step a call
    batch.step(max_steps=1000)
    assert batch.steps == 1
    for _ in range(40):
        batch.step(max_steps=1000)
    assert batch.steps >= 100


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_an_interrupted_call_ends_after_one_step_and_the_text_stays_the_same(trained, large, monkeypatch):
    if large:
        monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, torch.float32, 0)
    monkeypatch.setattr(generate_module, "JOIN_WAIT_SECONDS", 0.0)  # honoured at once
    params = SamplingParams(max_new_chars=120, temperature=0.9, top_k=8)
    whole = generate(trained.model, trained.vocab, "the ", params, n=3, seed=7)
    batch = DecodeBatch(trained.model, trained.vocab)
    seqs = [Sequence(params, 7, i) for i in range(3)]
    batch.add("the ", seqs)
    batch.interrupt[0] = 1  # as another thread sets it: every call ends after its first step
    while batch.busy:
        batch.step(max_steps=1000)
        assert batch.steps == 1
    assert [s.text for s in seqs] == [s.text for s in whole]  # the numbers drawn for later steps came back


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_an_interrupt_ends_a_call_once_it_has_run_the_join_wait(trained, large, monkeypatch):
    if large:
        monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, torch.float32, 0)
    batch = DecodeBatch(trained.model, trained.vocab)
    seqs = [Sequence(SamplingParams(max_new_chars=500, temperature=0.9), 1) for _ in range(2)]
    for s in seqs:
        s.streamed = True  # the first call ends at their first characters
    batch.add("the ", seqs)
    batch.step(max_steps=1000)  # the prefix and the first characters
    batch._seconds_per_step = 0.001  # calls of 50 steps; the join wait is 10 of them
    batch.interrupt[0] = 1
    batch.step(max_steps=1000)
    assert batch.steps == round(generate_module.JOIN_WAIT_SECONDS / 0.001)


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_a_row_at_its_length_ends_the_call_once_it_has_run_the_join_wait(trained, large, monkeypatch):
    """A row that reaches its length ends the call, but not before the join wait (the bound a
    newcomer waits): in a large batch some row ends every step or two, and a call per step would
    return to Python per step. The short row's text is the one it has alone."""
    if large:
        monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, torch.float32, 0)
    short, long_ = (SamplingParams(max_new_chars=n, temperature=0.9) for n in (3, 500))
    [alone] = generate(trained.model, trained.vocab, "the ", short, seed=4)
    batch = DecodeBatch(trained.model, trained.vocab)
    seqs = [Sequence(short, 4), Sequence(long_, 5)]
    batch.add("the ", seqs)
    batch._seconds_per_step = 0.001  # the join wait is 10 steps, a call at most 50
    batch.step(max_steps=1000)
    assert batch.steps == round(generate_module.JOIN_WAIT_SECONDS / 0.001)  # past the short row's end
    assert seqs[0].finished and seqs[0].text == alone.text and seqs[0].steps == 3
    assert not seqs[1].finished and seqs[1].steps == batch.steps - len("the ")  # the prefix read, then its own


@pytest.mark.parametrize("streamed", [False, True])
def test_only_a_streamed_row_ends_the_call_at_its_first_character(trained, streamed):
    """A stream's first character is awaited (time to first character); a whole answer's is not,
    and ending the call there would cost the batch a return to Python."""
    batch = DecodeBatch(trained.model, trained.vocab)
    seq = Sequence(SamplingParams(max_new_chars=200, temperature=0.9), 1)
    seq.streamed = streamed
    batch.add("the ", [seq])
    batch.step(max_steps=1000)
    assert seq.steps == (1 if streamed else 200)


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_a_compiled_call_sees_an_interrupt_set_by_another_thread(trained, large, monkeypatch):
    """Also the large path's one compiled call of all its steps (with MKL), which holds no GIL."""
    if large:
        monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, torch.float32, 0)
    monkeypatch.setattr(generate_module, "TICK_SECONDS", 60.0)
    batch = DecodeBatch(trained.model, trained.vocab)
    total = 2_000_000
    batch.add("the ", [Sequence(SamplingParams(max_new_chars=total, temperature=0.9), 1)])
    batch.step(max_steps=1000)  # the prefix and the first 1000 characters
    timer = threading.Timer(0.05, batch.interrupt.__setitem__, (0, 1))
    timer.start()
    batch.step(max_steps=total)
    timer.join()
    assert 0 < batch.steps < total // 2


@pytest.mark.parametrize("case", ["logprobs", "presence_frequency_bias", "regex_penalties"])
def test_every_sampling_option_takes_many_steps_a_call_on_the_cpu(trained, case):
    """Log-probabilities, a logit bias, penalties and a regex are sampled in compiled code: many
    steps a call, not torch's one-step path."""
    [seq] = _sequences(trained, [EXTRAS[case]], seed=1)
    batch = DecodeBatch(trained.model, trained.vocab)
    batch.add("a", [seq])
    batch.step(max_steps=20)
    assert batch.steps == 20 or seq.finished


def test_the_prefix_cache_keeps_its_state_while_the_compiled_path_updates_the_batch(trained):
    cache = PrefixCache(1_000_000)
    prefix = "the lazy dog jumps over the quick brown fox " * 3
    batch = DecodeBatch(trained.model, trained.vocab, prefix_cache=cache)
    batch.add(prefix, [Sequence(SamplingParams(max_new_chars=100), seed=1)], namespace="t")
    while batch.busy:
        batch.step(max_steps=1000)
    kept = cache.longest(("t", torch.float32), prefix[:-1])
    assert kept is not None
    snapshot = kept.state.clone()
    again = DecodeBatch(trained.model, trained.vocab, prefix_cache=cache)
    seq = Sequence(SamplingParams(max_new_chars=100), seed=1)
    again.add(prefix, [seq], namespace="t")
    while again.busy:
        again.step(max_steps=1000)
    assert torch.equal(cache.longest(("t", torch.float32), prefix[:-1]).state, snapshot)
    alone = generate(trained.model, trained.vocab, prefix, SamplingParams(max_new_chars=100), compiled=False)
    assert seq.text == alone[0].text


@pytest.mark.parametrize("stops", [("ab",), ("b", "ab"), ("ab", "b"), ("xyz", "zq"), ("aaa",), ("q",)])
def test_taking_characters_at_once_ends_where_one_at_a_time_does(stops):
    rng = np.random.default_rng(0)
    vocab = Vocab.from_text("abqxyz")
    for trial in range(200):
        ids = rng.integers(1, vocab.size, 40).tolist()
        params = SamplingParams(max_new_chars=int(rng.integers(1, 45)), stop=stops)
        one, many = Sequence(params, 0), Sequence(params, 0)
        for i in ids:
            if one.finished:
                break
            one.append(i, vocab.id_to_char(i))
        at = 0
        while not many.finished:
            size = int(rng.integers(1, 8))
            part = ids[at : at + size]
            if not part:
                break
            part = part[: params.max_new_chars - many.steps]  # as the compiled path: never past the limit
            many.extend(part, [vocab.id_to_char(i) for i in part])
            at += size
        assert (many.text, many.finish_reason, many.steps) == (one.text, one.finish_reason, one.steps), trial


def test_a_model_off_the_cpu_is_not_taken_by_the_compiled_path():
    model = build_model(ModelConfig(vocab_size=5), seed=0)
    assert fastpath.supports(model, torch.float32)
    assert not fastpath.supports(model, torch.float16)
    assert not fastpath.supports(model.to("meta"), torch.float32)  # as on cuda or mps: torch's path


def test_compiled_code_is_kept_where_it_can_be_written(tmp_path):
    """A read-only package directory or NUMBA_CACHE_DIR falls back to the temporary directory;
    nothing writable at all turns numba's disk cache off instead of failing at import."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, sys
        blocked = sys.argv[1].split(",")
        real = os.access
        os.access = lambda p, mode, **kw: not any(str(p).startswith(b) for b in blocked) and real(p, mode, **kw)
        from app.lm import fastpath
        print(fastpath.CACHE, os.environ.get("NUMBA_CACHE_DIR"))
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "unwritable")}
    package = str(Path(fastpath.__file__).parent)

    def run(blocked: list[str]) -> str:
        out = subprocess.run(
            [sys.executable, "-c", script, ",".join(blocked)], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    assert run([str(tmp_path / "unwritable"), package]) == f"True {tmp_path / 'charrnn-numba-cache'}"
    assert run([str(tmp_path)]) == "True None"  # beside the package
    assert run([str(tmp_path), package]) == "False None"


def test_the_samplers_exp_is_within_one_ulp_and_zero_at_minus_infinity():
    @fastpath._compiled
    def exps(a, out):  # pragma: no cover - compiled
        for i in range(a.shape[0]):
            out[i] = fastpath._exp_nonpositive(a[i])

    rng = np.random.default_rng(0)
    a = np.concatenate([-rng.exponential(5, 200_000), -rng.uniform(0, 708, 100_000), [0.0, -1e-300, -708.0]])
    out = np.empty_like(a)
    exps(a, out)
    assert np.abs(out.view(np.int64) - np.exp(a).view(np.int64)).max() <= 1
    special = np.array([-np.inf, -709.0, -745.0])
    exps(special, out[:3])
    assert (out[:3] == 0.0).all()  # below 2^-1022: no subnormal a uniform number could land on


@pytest.mark.parametrize("path", ["small", "large"])
def test_a_call_ends_at_the_step_where_a_row_reaches_a_stop_string(trained, path, monkeypatch):
    """The compiled paths find stop strings themselves: the call ends at the character that
    completes one (its request answered at once, no short calls while rows have stops), also where
    the stop string began in the call before (the row's last characters are passed in)."""
    if path == "large":
        monkeypatch.setitem(generate_module.FAST_MAX_STEP_FLOPS, torch.float32, 0)
    params = SamplingParams(max_new_chars=300, temperature=1.0)
    [free] = generate(trained.model, trained.vocab, "the ", params, seed=1)
    text = free.text
    at = next(k for k in range(60, 250) if text.find(text[k : k + 4]) == k)  # a 4-character stop first seen at k
    stop = text[at : at + 4]
    rows = 3 if path == "large" else 1  # the same stream each: the same text
    with_stop = dataclasses.replace(params, stop=(stop, "\u2603"))
    seqs = [Sequence(with_stop, seed=1, index=0) for _ in range(rows)]
    for s in seqs:
        s.streamed = True  # its first call ends at its first character
    batch = DecodeBatch(trained.model, trained.vocab)
    batch.add("the ", seqs)
    batch.step(max_steps=1 << 30)  # the prefix's character and the first sampled one (a fresh row)
    batch.step(max_steps=at + 2 - seqs[0].steps)  # ends two characters into the stop string
    assert seqs[0].steps == at + 2 and not seqs[0].finished
    batch.step(max_steps=1 << 30)  # would run ~50 ms (to the length) but for the stop
    assert batch.steps == 2 and all(s.finish_reason == "stop" for s in seqs)
    assert [s.text for s in seqs] == [text[:at]] * rows
