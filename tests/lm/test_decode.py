"""The decoding step: the same maths as forward(), in float32 or bfloat16, with weights kept up to date."""

import pytest
import torch

from app.lm import blas, decode
from app.lm.decode import DecodeWeights, bf16_product, decode_weights, step
from app.lm.model import CharRNN, ModelConfig


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("encoding", ["one_hot", "embedding"])
def test_single_step_matches_forward(cell, encoding):
    cfg = ModelConfig(vocab_size=9, cell=cell, hidden_size=8, num_layers=3, encoding=encoding)
    model = CharRNN(cfg).eval()
    ids = torch.randint(0, 9, (4, 6))
    logits, state = model(ids)
    _, s = model(ids[:, :5])
    step_logits, step_state = step(model, ids[:, 5], s)
    torch.testing.assert_close(step_logits, logits[:, -1])
    torch.testing.assert_close(step_state, state)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bfloat16_step_stays_close_to_float32_and_keeps_state_in_float32(cell):
    cfg = ModelConfig(vocab_size=30, cell=cell, hidden_size=64, num_layers=2, encoding="embedding")
    torch.manual_seed(0)
    model = CharRNN(cfg).eval()
    ids = torch.randint(1, 30, (5, 40))
    s32 = s16 = model.init_state(5)
    for t in range(ids.shape[1]):  # 40 steps: rounding must not build up through the carried state
        l32, s32 = step(model, ids[:, t], s32)
        l16, s16 = step(model, ids[:, t], s16, torch.bfloat16)
    assert l16.dtype == s16.dtype == torch.float32
    assert (l16 - l32).abs().max() < 0.05
    assert (s16 - s32).abs().max() < 0.05
    assert not torch.equal(l16, l32)  # the products did run in bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_step_gives_a_row_the_same_result_alone_or_batched(dtype):
    """Exactly the same in any batch of two or more rows (bf16: whole blocks of rows, bf16_product;
    with 512 inputs to a product, torch.mm rounded a row among 33 otherwise than among 64; the
    output layer as a transposed view rounded 2-10 rows otherwise), and within float32 rounding
    alone (one row: a product of another shape)."""
    cfg = ModelConfig(vocab_size=30, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    torch.manual_seed(1)
    model = CharRNN(cfg).eval()
    ids = torch.randint(1, 30, (100,))
    state = torch.randn(cfg.state_rows, 100, 256) * 0.5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the service decodes
    try:
        batched, batched_state = step(model, ids, state, dtype)
        for rows in (2, 7, 17, 33, 40, 64, 65):
            some, some_state = step(model, ids[:rows], state[:, :rows].contiguous(), dtype)
            assert torch.equal(some, batched[:rows]) and torch.equal(some_state, batched_state[:, :rows]), rows
        for row in (0, 17, 63):
            alone, alone_state = step(model, ids[row : row + 1], state[:, row : row + 1].contiguous(), dtype)
            torch.testing.assert_close(alone[0], batched[row], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(alone_state[:, 0], batched_state[:, row], rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_decode_weights_follow_parameter_updates_in_every_dtype():
    cfg = ModelConfig(vocab_size=10, cell="lstm", hidden_size=16, num_layers=2, encoding="embedding")
    model = CharRNN(cfg).eval()
    ids, state = torch.tensor([3]), model.init_state(1)
    before = {dt: step(model, ids, state, dt)[0] for dt in (torch.float32, torch.bfloat16)}
    with torch.no_grad():
        model.rnn.weight_hh_l1.add_(0.5)
        model.fc.bias.add_(1.0)
    for dt, old in before.items():
        assert not torch.allclose(step(model, ids, state, dt)[0], old)


def test_decode_weights_are_cached_per_dtype_until_a_parameter_changes():
    cfg = ModelConfig(vocab_size=10, cell="gru", hidden_size=16, num_layers=2)
    model = CharRNN(cfg).eval()
    w32, w16 = decode_weights(model), decode_weights(model, torch.bfloat16)
    assert isinstance(w32, DecodeWeights) and w32.w_cat[0] is None and w32.w_cat[1].dtype == torch.float32
    assert w16.w_hh[0].dtype == torch.bfloat16 and w16.w_hh_rounded[0].dtype == torch.float32
    assert w32.w_hh_rounded[0] is w32.w_hh[0]  # float32 values are their own rounding: no copy
    assert decode_weights(model) is w32 and decode_weights(model, torch.bfloat16) is w16
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # in place: a new _version
    assert decode_weights(model) is not w32
    rebuilt = decode_weights(model)
    model.fc.weight.data = model.fc.weight.data.clone()  # other memory: a new data_ptr
    assert decode_weights(model) is not rebuilt


def test_bf16_products_without_mkl_or_onednn_packing_keep_whole_blocks(monkeypatch):
    """Where this torch has no MKL, oneDNN's packed product; where it cannot pack a weight either,
    torch.mm multiplies the same blocks of 64 rows: slower, still a row's numbers in any batch;
    all of them the same product within bf16 rounding."""
    cfg = ModelConfig(vocab_size=30, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    torch.manual_seed(2)
    model = CharRNN(cfg).eval()
    w = decode_weights(model, torch.bfloat16)
    x = torch.randn(100, 512).to(torch.bfloat16)
    exact = x.float() @ w.w_cat[1].float()
    if blas.usable(torch.bfloat16):
        torch.testing.assert_close(bf16_product(model, x, w.w_cat[1]).float(), exact, rtol=1e-2, atol=1e-2)
    monkeypatch.setattr(blas, "usable", lambda dtype: False)
    packed = bf16_product(model, x, w.w_cat[1])
    torch.testing.assert_close(packed.float(), exact, rtol=1e-2, atol=1e-2)
    monkeypatch.setattr(decode, "_packed", lambda model, weight: (weight, None))
    plain = bf16_product(model, x, w.w_cat[1])
    torch.testing.assert_close(plain.float(), packed.float(), rtol=1e-2, atol=1e-2)
    for rows in (2, 33, 64, 65):
        assert torch.equal(bf16_product(model, x[:rows], w.w_cat[1]), plain[:rows]), rows
