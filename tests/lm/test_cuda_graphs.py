"""Decoding steps as CUDA graphs (app/lm/cuda_graphs.py) against the kernel-by-kernel reference.
The graph tests run only where CUDA is present."""

import pytest
import torch

from app.lm import cuda_graphs, decode
from app.lm.generate import DecodeBatch, generate
from app.lm.model import ModelConfig
from app.lm.sampling import SamplingParams
from app.lm.train import build_model
from app.lm.vocab import Vocab

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
