"""Decoding steps as CUDA graphs (app/lm/cuda_graphs.py) against the kernel-by-kernel reference.
The graph tests run only where CUDA is present."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from app.lm import cuda_graphs, decode
from app.lm.generate import DecodeBatch, generate
from app.lm.model import ModelConfig
from app.lm.sampling import RowParams, SamplingParams, Sequence, _draw
from app.lm.train import build_model
from app.lm.vocab import Vocab
from tests.lm.conftest import CASES as BASE_CASES

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_batch_sizes_round_up_to_a_recorded_bucket():
    sizes = (1, 2, 63, 64, 65, 128, 129, 300)
    assert [cuda_graphs.bucket(n) for n in sizes] == [64, 64, 64, 64, 128, 128, 256, 512]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_blocked_step_is_the_step_block_by_block(dtype):
    """What a graph records (here on the CPU): every product has BLOCK_ROWS rows, the rows in order."""
    cfg = ModelConfig(vocab_size=30, cell="lstm", hidden_size=32, num_layers=2, encoding="embedding")
    model = build_model(cfg, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (3 * cuda_graphs.BLOCK_ROWS,), generator=gen)
    state = torch.randn(cfg.state_rows, len(ids), 32, generator=gen)
    with torch.inference_mode():
        logits, new_state = cuda_graphs.blocked_step(model, ids, state, dtype)
        for k in range(0, len(ids), cuda_graphs.BLOCK_ROWS):
            block = slice(k, k + cuda_graphs.BLOCK_ROWS)
            want_logits, want_state = decode.step(model, ids[block], state[:, block].contiguous(), dtype)
            assert torch.equal(logits[block], want_logits) and torch.equal(new_state[:, block], want_state)
    with pytest.raises(AssertionError):
        cuda_graphs.blocked_step(model, ids[:5], state[:, :5], dtype)


def test_a_cpu_model_keeps_the_kernel_by_kernel_step():
    model = build_model(ModelConfig(vocab_size=6, hidden_size=8), seed=0)
    assert not cuda_graphs.supported(model)
    assert DecodeBatch(model, Vocab.from_text("abcde"))._torch_step is decode.step


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_replayed_step_matches_the_reference_step(cell, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    cfg = ModelConfig(vocab_size=30, cell=cell, hidden_size=64, num_layers=2, encoding="embedding")
    model = build_model(cfg, seed=0).cuda().eval()
    gen = torch.Generator().manual_seed(1)
    for rows in (1, 3, 8, 5):  # new buckets, then one recorded before
        ids = torch.randint(0, 30, (rows,), generator=gen).cuda()
        state = torch.randn(cfg.state_rows, rows, 64, generator=gen).cuda()
        with torch.inference_mode():
            want = decode.step(model, ids, state, dtype)
            got = cuda_graphs.step(model, ids, state, dtype)
        # the reference multiplies `rows` rows, the graph 64: kernels of their own, sums in other orders
        # (in bf16, a product may round to the neighbouring bf16 value)
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance)
    graphs = decode.extra(model, dtype, "cuda_graphs")
    assert sorted(graphs.by_size) == [64] and not graphs.failed


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_row_gets_the_same_result_alone_or_in_any_batch_on_the_gpu(dtype):
    """Bit for bit: a seed gives the same text alone or in a crowd on the GPU too."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    vocab = Vocab.from_text("the quick brown fox jumps over the lazy dog, and then sleeps.")
    cfg = ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    model = build_model(cfg, seed=0).cuda().eval()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, vocab.size, (200,), generator=gen).cuda()
    state = (torch.randn(cfg.state_rows, 200, 256, generator=gen) * 0.5).cuda()
    with torch.inference_mode():
        crowd_logits, crowd_state = cuda_graphs.step(model, ids, state, dtype)
        for rows in (1, 3, 64, 65, 130):
            logits, new_state = cuda_graphs.step(model, ids[:rows], state[:, :rows], dtype)
            assert torch.equal(logits, crowd_logits[:rows]), rows
            assert torch.equal(new_state, crowd_state[:, :rows]), rows
    params = SamplingParams(max_new_chars=300, temperature=1.0)
    alone = generate(model, vocab, "the ", params, n=1, seed=5, dtype=dtype)
    crowd = generate(model, vocab, "the ", params, n=70, seed=5, dtype=dtype)
    assert alone[0].text == crowd[0].text


@needs_cuda
@pytest.mark.cuda
def test_graphs_follow_parameter_updates():
    cfg = ModelConfig(vocab_size=12, cell="lstm", hidden_size=32)
    model = build_model(cfg, seed=0).cuda().eval()
    ids = torch.tensor([1, 2], device="cuda")
    state = torch.zeros(cfg.state_rows, 2, 32, device="cuda")
    with torch.inference_mode():
        before, _ = cuda_graphs.step(model, ids, state)
    with torch.no_grad():  # a recurrent matrix: decode_weights copies it, so recorded graphs read the old copy
        model.rnn.weight_ih_l0.mul_(0.5)
    with torch.inference_mode():
        after, _ = cuda_graphs.step(model, ids, state)
        torch.testing.assert_close(after, decode.step(model, ids, state)[0])
    assert not torch.allclose(after, before)


@needs_cuda
@pytest.mark.cuda
def test_generation_on_the_gpu_chooses_what_the_reference_path_chooses():
    vocab = Vocab.from_text("the quick brown fox jumps over the lazy dog")
    cfg = ModelConfig(vocab_size=vocab.size, cell="gru", hidden_size=48, num_layers=2, encoding="embedding")
    model = build_model(cfg, seed=3).cuda().eval()
    params = SamplingParams(max_new_chars=80)  # greedy: a padded bucket may round differently, not choose otherwise
    for prefix in ("the ", "quick", "z"):
        graphed = generate(model, vocab, prefix, params, n=3, seed=7)
        reference = generate(model, vocab, prefix, params, n=3, seed=7, compiled=False)
        assert [s.text for s in graphed] == [s.text for s in reference]


# ---- several steps per call (decode_chunk), run here on the CPU as a GPU would run them -----------


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """DecodeBatch takes the GPU's paths for a CPU model: decode_chunk and step, eagerly (no graph
    is recorded off a GPU), the same code a graph records; counts decode_chunk's calls and steps."""
    monkeypatch.setattr(cuda_graphs, "supported", lambda model: True)
    calls: list[int] = []
    decode_chunk = cuda_graphs.decode_chunk

    def counted(*args):
        calls.append(decode_chunk(*args))
        return calls[-1]

    monkeypatch.setattr(cuda_graphs, "decode_chunk", counted)
    return calls


CASES = {**BASE_CASES, "with_a_logprobs_row": SamplingParams(max_new_chars=300, temperature=0.9, top_k=8)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_gpu_path_chooses_what_the_reference_path_chooses(trained, case, dtype, as_on_a_gpu):
    """Rows of different lengths (and a long prefix, read while the others decode) leave as they
    finish; every row as torch's one-step path has it, many steps a call."""
    lengths = (40, 90, 300, 150, 300, 7)
    params = [dataclasses.replace(CASES[case], max_new_chars=n) for n in lengths]
    if case == "with_a_logprobs_row":
        params[1] = dataclasses.replace(params[1], logprobs=2)  # a row that needs the host: one step a call

    def run(compiled: bool) -> list[tuple[str, str | None, int]]:
        batch = DecodeBatch(trained.model, trained.vocab, dtype, compiled=compiled)
        seqs = [Sequence(p, seed=9, index=i) for i, p in enumerate(params)]
        batch.add("the ", seqs[:4])
        batch.step(max_steps=37)
        batch.add("the lazy dog jumps over the quick brown fox; " * 2, seqs[4:])  # read in chunks meanwhile
        while batch.busy:
            batch.step(max_steps=37)
        return [(s.text, s.finish_reason, s.steps) for s in seqs]

    reference = run(False)
    assert not as_on_a_gpu
    assert run(True) == reference
    assert as_on_a_gpu and max(as_on_a_gpu) == 32  # calls of recorded lengths, up to MAX_STEPS
    assert set(as_on_a_gpu) <= {1, 2, 4, 8, 16, 32}


def test_calls_take_recorded_lengths_and_the_least_sampler():
    assert [cuda_graphs.chunk_steps(n) for n in (0, 1, 2, 3, 31, 32, 33, 1000)] == [1, 1, 2, 2, 16, 32, 32, 32]
    zero, one = np.zeros(2), np.ones(2)
    k0, k5 = np.zeros(2, np.int64), np.array([0, 5])
    assert cuda_graphs.sampler(zero, k5, 0.5 * one, one) == "greedy"  # filters of greedy rows do not count
    assert cuda_graphs.sampler(np.array([0.0, 0.7]), k0, one, zero) == "temperature"
    assert cuda_graphs.sampler(np.array([0.7, 0.0]), k5[::-1], one, zero) == "filtered"
    assert cuda_graphs.sampler(one, k0, np.array([1.0, 0.9]), zero) == "filtered"
    assert cuda_graphs.sampler(one, k0, one, np.array([0.0, 0.1])) == "filtered"


class _Drawn:
    def __init__(self, u: float):
        self.u = u

    def uniform(self) -> float:
        return self.u


@pytest.mark.parametrize("vocab_size", [3, 79, 300])
def test_the_device_sampler_draws_what_the_python_sampler_draws(vocab_size):
    """sample() (torch, float64, every row at once) against sampling._draw row by row: fresh
    logits with ties, UNK masked, every filter, and the lighter forms where they apply."""
    rng = np.random.default_rng(vocab_size)
    settings = [(1.0, 0, 1.0, 0.0), (0.8, 2, 1.0, 0.0), (1.3, 0, 0.6, 0.0), (0.7, 0, 1.0, 0.3), (1.0, 5, 0.9, 0.05)]
    settings += [(0.0, 0, 1.0, 0.0), (0.0, 3, 0.5, 0.1)]  # greedy rows (their filters unused)
    rows = 300 * len(settings)
    logits = rng.normal(0, 3, (rows, vocab_size)).astype(np.float32)
    logits[::3] = np.round(logits[::3])  # ties: a few distinct values only
    temperature, top_k, top_p, min_p = (np.array(c * 300) for c in zip(*settings, strict=True))
    u = rng.random(rows)
    as_tensors = [torch.from_numpy(a) for a in (logits, temperature, top_k, top_p, min_p, u)]
    chosen = cuda_graphs.sample(*as_tensors, unk=0).numpy()
    masked = logits.astype(np.float64)
    masked[:, 0] = -np.inf
    for r in range(rows):
        no = np.zeros(1, bool)
        params = RowParams(temperature[r : r + 1], top_k[r : r + 1], top_p[r : r + 1], min_p[r : r + 1], no, no)
        want = (
            int(masked[r].argmax()) if temperature[r] == 0 else int(_draw(masked[r : r + 1], [_Drawn(u[r])], params)[0])
        )  # type: ignore[list-item]
        assert chosen[r] == want, r
    greedy = temperature == 0
    for how, rows_served in (
        ("greedy", greedy),
        ("temperature", greedy | ((top_k == 0) & (top_p == 1) & (min_p == 0))),
    ):
        lighter = cuda_graphs.sample(*as_tensors, unk=0, how=how).numpy()
        assert (lighter[rows_served] == chosen[rows_served]).all()


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_calls_on_the_gpu_replay_recorded_graphs_and_choose_what_the_reference_chooses(trained, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = build_model(trained.model.config, seed=0)
    model.load_state_dict(trained.model.state_dict())
    model = model.cuda().eval()
    for params in (CASES["greedy"], CASES["t0.8_topk5"], CASES["t1.0"]):
        graphed = generate(model, trained.vocab, "the ", params, n=3, seed=7, dtype=dtype)
        reference = generate(model, trained.vocab, "the ", params, n=3, seed=7, dtype=dtype, compiled=False)
        if dtype == torch.float32:  # bf16: a product of 3 rows may round otherwise than one of 64
            assert [s.text for s in graphed] == [s.text for s in reference]
        assert all(len(s.text) == 300 for s in graphed)
    graphs = decode.extra(model, dtype, "cuda_graphs")
    assert not graphs.failed
    assert {how for _, _, how, _ in graphs.chunks} == {"greedy", "filtered", "temperature"}
    assert all(g.graph is not None for g in graphs.chunks.values())


def test_decode_workers_sharing_a_model_do_not_share_a_calls_buffers(trained, as_on_a_gpu):
    """Two threads decoding with one model (CHARRNN_DECODE_WORKERS=2 on a GPU) at once: each
    call's buffers are filled, replayed and read by one thread at a time."""
    params = SamplingParams(max_new_chars=200, temperature=1.0)
    seeds = range(6)
    alone = {seed: generate(trained.model, trained.vocab, "the ", params, n=2, seed=seed)[1].text for seed in seeds}
    found: dict[int, str] = {}

    def work(mine):
        for seed in mine:
            found[seed] = generate(trained.model, trained.vocab, "the ", params, n=2, seed=seed)[1].text

    threads = [threading.Thread(target=work, args=(list(seeds)[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == alone
