"""One decoding step of a CharRNN, rearranged for speed: a table lookup, fused products and no sequence machinery."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import nn

from app.lm import blas
from app.lm.model import CharRNN


@dataclass(frozen=True)
class DecodeWeights:
    """A model's weights as step() uses them, for one dtype of the matrix products.

    G is the number of gates (rnn 1, lstm 4, gru 3); per-layer tuples are indexed by layer.
    An LSTM's cell-input (g) rows come doubled: step() takes their tanh as 2 sigmoid(2x) - 1.
    """

    input_table: torch.Tensor  # (V, G*H) float32: layer 0's input projection, biases included
    w_hh: tuple[torch.Tensor, ...]  # (H, G*H) in dtype: the recurrent matrices, transposed
    w_ih: tuple[torch.Tensor, ...]  # (I, G*H) in dtype: the input matrices, transposed
    b_ih: tuple[torch.Tensor, ...]  # (G*H,) float32
    b_hh: tuple[torch.Tensor, ...]  # (G*H,) float32
    w_cat: tuple[torch.Tensor | None, ...]  # (H+H, G*H) in dtype: [W_ih W_hh] of layers >= 1; None for layer 0
    bias: tuple[torch.Tensor | None, ...]  # (G*H,) float32: b_ih + b_hh of layers >= 1; None for layer 0
    fc: torch.Tensor  # (H, V) float32: the output layer, transposed (contiguous: a row the same in any batch of 2+)
    # the matrices' values again in float32 (the same tensors when dtype is float32): a one-row
    # step multiplies these, faster than a bf16 product and rounded alike (but for float32 ulps)
    w_hh_rounded: tuple[torch.Tensor, ...]
    w_ih_rounded: tuple[torch.Tensor, ...]
    w_cat_rounded: tuple[torch.Tensor | None, ...]


@dataclass
class _Cache:
    params: list[nn.Parameter]  # the Parameter objects live as long as the model; their values may change
    key: tuple = ()  # every parameter's (_version..., data_ptr...) when `weights` were built
    weights: dict[torch.dtype, DecodeWeights] = field(default_factory=dict)
    extras: dict[tuple[torch.dtype, str], object] = field(default_factory=dict)  # other forms of `weights`


# per model, dropped with it; a model's own attributes stay its parameters and buffers
_caches: weakref.WeakKeyDictionary[CharRNN, _Cache] = weakref.WeakKeyDictionary()


@torch.no_grad()
def step(
    model: CharRNN, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step for a batch: ids (B,) + state (R, B, H) -> logits (B, V) + new state.

    Same maths as model.forward() with T=1, rearranged for speed (see decode_weights): the
    first layer's input projection is a table lookup, deeper layers use one fused matrix
    product per layer, and nn.RNN's sequence machinery (and oneDNN's slow small-batch path)
    is skipped.

    `dtype` is what the recurrent matrix products run in. bfloat16 is several times faster
    on CPUs with AVX512-BF16 or AMX (and on GPUs): weights, the products' inputs and their
    results are rounded to bfloat16 (sums are accumulated in float32); biases, gates, the
    state and the logits stay float32. A row's result does not depend on the other rows: on the
    CPU, bf16 products of two or more rows run in whole blocks of rows (bf16_product); one row
    alone multiplies the same bf16 values in float32 (faster), rounded alike but for float32 ulps.
    """
    cfg = model.config
    w = decode_weights(model, dtype)
    hidden = cfg.hidden_size
    layers = cfg.num_layers
    new_h, new_c = [], []
    x_proj = w.input_table[ids]  # (B, G*H): layer 0's input projection, bias included
    x = x_proj  # each later layer's input is the previous layer's output
    for layer in range(layers):
        h = state[layer]  # (B, H)
        if layer > 0:  # input and recurrent products in one matrix multiply
            bias, w_cat, w_cat_rounded = w.bias[layer], w.w_cat[layer], w.w_cat_rounded[layer]
            assert bias is not None and w_cat is not None and w_cat_rounded is not None  # None only for layer 0
            gates = _product(model, bias, torch.cat((x, h), dim=1), w_cat, w_cat_rounded)
        elif cfg.cell == "gru":
            gates = x_proj
        else:
            gates = _product(model, x_proj, h, w.w_hh[0], w.w_hh_rounded[0])  # (B, G*H)
        if cfg.cell == "lstm":
            h, c = _lstm_cell(gates, state[layers + layer], hidden)
            new_c.append(c)
        elif cfg.cell == "gru":
            # the reset gate scales only the recurrent part of the candidate: keep them apart
            x_part = gates if layer == 0 else _product(model, w.b_ih[layer], x, w.w_ih[layer], w.w_ih_rounded[layer])
            h_part = _product(model, w.b_hh[layer], h, w.w_hh[layer], w.w_hh_rounded[layer])
            h = _gru_cell(x_part, h_part, h, hidden)
        else:
            h = gates.tanh()
        new_h.append(h)
        x = h
    logits = torch.addmm(model.fc.bias, x, w.fc)  # (B, V): small, always float32
    return logits, torch.stack(new_h + new_c)  # (R, B, H)


def _product(
    model: CharRNN, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rounded: torch.Tensor
) -> torch.Tensor:
    """bias + x @ weight in float32, the product computed in weight's dtype (`rounded`: its values in float32)."""
    dtype = weight.dtype
    if dtype == torch.float32:
        return torch.addmm(bias, x, weight)
    if x.shape[0] == 1:  # one row: the same bf16 values multiplied in float32 are faster, then rounded to bf16
        return bias.add(torch.mm(x.to(dtype).float(), rounded).to(dtype))
    if x.is_cpu:  # whole blocks of rows: the same kernels for a row in any batch (bf16_product)
        return bias.add(bf16_product(model, x.to(dtype), weight))
    return bias.add(torch.mm(x.to(dtype), weight))  # a bf16 result; the add promotes to float32


BF16_BLOCK_ROWS = 64  # rows of every bfloat16 product of two or more rows on the CPU (bf16_product)


def bf16_product(
    model: CharRNN, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x (B, K) @ weight (K, N), both bfloat16, one of the model's decode weights, on the CPU: in
    blocks of BF16_BLOCK_ROWS rows (a last short block padded with zero rows), float32 sums
    rounded to bfloat16. BLAS libraries pick their kernel by the number of rows, and kernels sum
    in orders of their own: a bf16 product of 33 rows of 512 inputs rounded a row otherwise than
    the same row among 64 (one thread; after 20 steps the state differed by up to 3e-4). With
    every product 64 rows, a row's result is the same in any batch.

    The product is MKL's where blas.usable says so (blas.gemm_bf16: the one the large batch path
    calls from compiled code, so the two agree bit for bit); elsewhere oneDNN's linear with the
    weight packed once for that shape (kept beside the decode weights; the large batch path calls
    this function there), or torch.mm of the same blocks."""
    rows, block = x.shape[0], BF16_BLOCK_ROWS
    mkl = blas.usable(torch.bfloat16)
    matrix, packed = (weight, None) if mkl else _packed(model, weight)
    sums = torch.empty(block, weight.shape[1]) if mkl else None
    for k in range(0, rows, block):
        part = x[k : k + block]
        if part.shape[0] < block:
            part = torch.cat((part, part.new_zeros(block - part.shape[0], part.shape[1])))
        if sums is not None:
            y = blas.gemm_bf16(part.contiguous(), matrix, sums).to(torch.bfloat16)
        elif packed is None:
            y = torch.mm(part, matrix)
        else:
            y = torch.ops.mkldnn._linear_pointwise(part, packed, None, "none", [], "")
        if rows <= block and out is None:  # one block: its result as it is
            return y[:rows]
        if out is None:
            out = torch.empty(rows, weight.shape[1], dtype=weight.dtype)
        out[k : k + block] = y[: rows - k]
    assert out is not None  # rows >= 1
    return out


def _packed(model: CharRNN, weight: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(weight, oneDNN's packing of it for products of BF16_BLOCK_ROWS rows, or None where this torch has none)."""
    cache: dict[int, tuple[torch.Tensor, Any]] | None = extra(model, weight.dtype, "onednn_packed")
    if cache is None:
        cache = extra(model, weight.dtype, "onednn_packed", {})
    key = weight.data_ptr()
    if key not in cache:
        try:  # packed, and tried once: a CPU without bf16 support in oneDNN fails here, not in a request
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), BF16_BLOCK_ROWS)
            trial = weight.new_zeros(BF16_BLOCK_ROWS, weight.shape[0])
            torch.ops.mkldnn._linear_pointwise(trial, packed, None, "none", [], "")
            cache[key] = (weight, packed)
        except (AttributeError, RuntimeError):  # no oneDNN in this build, or no bf16 product for it
            cache[key] = (weight, None)
    return cache[key]


def _lstm_cell(gates: torch.Tensor, c: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (B, 4H) with doubled cell-input columns + cell state (B, H) -> new h, new c."""
    # tanh(x) = 2 sigmoid(2x) - 1: torch's CPU tanh costs several times its sigmoid, and the
    # cell-input columns come pre-doubled (decode_weights), so one sigmoid covers all four
    # gates: act = [i, f, sigmoid(2 g~), o]
    act = gates.sigmoid()
    i, f, o = act[:, :hidden], act[:, hidden : 2 * hidden], act[:, 3 * hidden :]
    # c = f c' + i g = (f c' - i) + 2 i sigmoid(2 g~)
    c = torch.addcmul(torch.addcmul(i.neg(), f, c), i, act[:, 2 * hidden : 3 * hidden], value=2.0)
    h = torch.addcmul(o.neg(), o, torch.sigmoid(c + c), value=2.0)  # o tanh(c)
    return h, c


def _gru_cell(x_part: torch.Tensor, h_part: torch.Tensor, h: torch.Tensor, hidden: int) -> torch.Tensor:
    """Input and recurrent projections (B, 3H) + hidden state (B, H) -> new hidden state."""
    rz = (x_part[:, : 2 * hidden] + h_part[:, : 2 * hidden]).sigmoid()
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = torch.addcmul(x_part[:, 2 * hidden :], r, h_part[:, 2 * hidden :]).tanh()
    return n + z * (h - n)


def decode_weights(model: CharRNN, dtype: torch.dtype = torch.float32) -> DecodeWeights:
    """The model's weights rearranged for step(), cached per dtype and rebuilt whenever any
    parameter has changed (in place, or moved to other memory)."""
    cache = _caches.get(model)
    if cache is None:
        cache = _caches[model] = _Cache(list(model.parameters()))
    key = tuple(p._version for p in cache.params) + tuple(p.data_ptr() for p in cache.params)
    if cache.key != key:
        cache.key, cache.weights, cache.extras = key, {}, {}
    if dtype not in cache.weights:
        cache.weights[dtype] = _build(model, dtype)
    return cache.weights[dtype]


def extra(model: CharRNN, dtype: torch.dtype, name: str, value: object = None) -> Any:
    """Another form of decode_weights(model, dtype) kept beside it (and dropped with it when a
    parameter changes): returns the one kept under `name`, or keeps `value` there. Call
    decode_weights first: it is what notices a change."""
    cache = _caches[model]
    if value is not None:
        cache.extras[(dtype, name)] = value
    return cache.extras.get((dtype, name))


def _build(model: CharRNN, dtype: torch.dtype) -> DecodeWeights:
    """Layer 0's input is one of V characters, so its input projection (embedding or one-hot
    times W_ih, plus the bias) is precomputed as a (V, G*H) table: a lookup replaces that
    matrix product. The recurrent matrices are stored in `dtype`; tables, biases and the
    output layer stay float32."""
    cfg = model.config
    scale = None  # per gate row
    if cfg.cell == "lstm":  # double the cell-input (g) rows: step() takes its tanh as 2 sigmoid(2x) - 1
        scale = torch.ones(4 * cfg.hidden_size, device=model.fc.weight.device)
        scale[2 * cfg.hidden_size : 3 * cfg.hidden_size] = 2.0  # a power of two: exact in any float format

    def get(name: str, layer: int) -> torch.Tensor:
        t = getattr(model.rnn, f"{name}_l{layer}").detach()
        if scale is None:
            return t
        return t * (scale[:, None] if t.dim() == 2 else scale)

    def matrix(m: torch.Tensor) -> torch.Tensor:
        return m.t().contiguous().to(dtype)

    inputs = model.embed.weight.detach() if cfg.encoding == "embedding" else model.one_hot  # (V, I)
    table = inputs @ get("weight_ih", 0).t() + get("bias_ih", 0)  # (V, G*H)
    if cfg.cell != "gru":
        table = table + get("bias_hh", 0)
    layers = range(cfg.num_layers)
    deeper = range(1, cfg.num_layers)
    w_hh = tuple(matrix(get("weight_hh", k)) for k in layers)
    w_ih = tuple(matrix(get("weight_ih", k)) for k in layers)
    w_cat = (None,) + tuple(matrix(torch.cat((get("weight_ih", k), get("weight_hh", k)), dim=1)) for k in deeper)
    return DecodeWeights(
        input_table=table.contiguous(),
        w_hh=w_hh,
        w_ih=w_ih,
        b_ih=tuple(get("bias_ih", k) for k in layers),
        b_hh=tuple(get("bias_hh", k) for k in layers),
        w_cat=w_cat,
        bias=(None,) + tuple(get("bias_ih", k) + get("bias_hh", k) for k in deeper),
        fc=model.fc.weight.detach().t().contiguous(),  # as a transposed view, addmm rounded 2-10 rows otherwise
        w_hh_rounded=_in_float32(w_hh),
        w_ih_rounded=_in_float32(w_ih),
        w_cat_rounded=_in_float32(w_cat),
    )


@overload
def _in_float32(matrices: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]: ...
@overload
def _in_float32(matrices: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]: ...
def _in_float32(matrices: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    return tuple(m.float() if m is not None else None for m in matrices)  # float32 ones are returned as they are
