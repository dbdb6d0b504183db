"""Decoding a large batch on the CPU: a BLAS's matrix products, compiled code for the rest.

For a few rows, app/lm/fastpath.py runs whole steps in compiled code. For many rows, a BLAS's
batched products win (blocking, and AMX tiles for bfloat16, which compiled code cannot reach),
but torch's step around them is a dozen pointwise ops and a sampler driven from Python per step,
each one allocating: on the 2x256 LSTM with 64 rows in bfloat16, more time than the products
themselves. Here a step is the products into fixed buffers, the cells (app/lm/fastpath.py's
`_layer_row`, the small path's own maths), the output layer, and the small path's sampler
(`_choose`). Several steps run per call while nobody waits to join, as on the small path.

Where torch has MKL (its x86-64 builds), a call is one compiled call of all its steps
(`_decode_chunk_blas`), calling MKL's products by their address (app/lm/blas.py): no Python and
no GIL from its first step to its last, so the HTTP event loop's Python never holds a step up.
Elsewhere, torch's products are called from Python a step at a time, with compiled calls for the
cells and the sampler between them (`_decode_chunk_with_torch`). Both multiply what decode.step
multiplies (float32: torch.mm's own sgemm; bfloat16: decode.bf16_product), so the same results.

In bfloat16 the products run on blocks of decode.BF16_BLOCK_ROWS rows (the buffers padded with
zero rows; decode.bf16_product says why), so that a row's result does not depend on its batch.

A call ends after the step where a row ends at a stop string or its regex (found in compiled
code, as on the small path), so that its request is answered at once; where a row reaches its
length, once the call has run the join wait (generate.DecodeBatch._compiled_steps chooses).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.extending import overload as _overload

from app.lm import blas, decode, fastpath

_compiled = fastpath._compiled
overload: Any = _overload
intrinsic: Any = fastpath.intrinsic


def _as_input(v, like):  # pragma: no cover - replaced by its compiled overload
    """v (float32) as the products' input buffer holds it (`like` is one of its elements)."""
    raise NotImplementedError


@overload(_as_input, inline="always")
def _as_input_compiled(v, like):  # pragma: no cover - compiled
    if like == types.uint16:  # bfloat16 bits: round to nearest, ties to even

        def to_bf16(v, like):
            return np.uint16(fastpath._bf16_rounded(fastpath._bits(v)) >> np.uint32(16))

        return to_bf16
    return lambda v, like: v


@_compiled
def _layer(cell, layer, layers, table, bx, bh, ids, state, prod, prod2, inputs, upper):  # pragma: no cover
    """Every row of one layer after its products: prod (B, G*H) the summed products (a GRU's
    recurrent part apart in prod2), as float32 or bfloat16 bits. Runs the cell into state and
    writes the new h where the next products read it, in their dtype: this layer's own recurrent
    input for the next step (the last H columns of `inputs`), and the next layer's input for this
    step (the first H columns of `upper`, unless this is the last layer)."""
    batch = state.shape[1]
    hidden = state.shape[2]
    for r in range(batch):
        fastpath._layer_row(cell, layer, layers, table, bx, bh, ids[r], prod[r], prod2[r], state, r)
        h = state[layer, r]
        own = inputs[r]
        base = own.shape[0] - hidden
        for j in range(hidden):
            own[base + j] = _as_input(h[j], own[base + j])
        if layer + 1 < layers:
            up = upper[r]
            for j in range(hidden):
                up[j] = own[base + j]


# ---- MKL's products from compiled code (app/lm/blas.py says why) ---------------------------------


@intrinsic
def _gemm_bf16(typingctx, fn, m, n, k, a, lda, b, ldb, c, ldc):  # pragma: no cover - compiled
    """c (m x n, float32) = a (m x k) @ b (k x n), a and b bfloat16 bits, row-major: addresses and
    leading dimensions (in elements) as int64; fn is cblas_gemm_bf16bf16f32's address."""
    sig = types.void(*([types.int64] * 10))

    def codegen(context, builder, signature, args):
        i32, f32, ptr = ir.IntType(32), ir.FloatType(), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32])
        f, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args

        def i(v):
            return builder.trunc(v, i32)

        def p(v):
            return builder.inttoptr(v, ptr)

        layout, plain = i32(blas.ROW_MAJOR), i32(blas.NO_TRANSPOSE)
        builder.call(
            builder.inttoptr(f, fnty.as_pointer()),
            [layout, plain, plain, i(m_), i(n_), i(k_), f32(1.0), p(a_), i(lda_), p(b_), i(ldb_), f32(0.0),
             p(c_), i(ldc_)],
        )  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _sgemm(typingctx, fn, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover - compiled
    """Fortran's sgemm (column-major; every argument by its address, as int64); fn: its address."""
    sig = types.void(*([types.int64] * 14))

    def codegen(context, builder, signature, args):
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ptr] * 13)
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [builder.inttoptr(v, ptr) for v in args[1:]])
        return context.get_dummy_value()

    return sig, codegen


@fastpath._inlined
def _mkl_product_f32(fn, x, w, n, c, beta, dims, scalars):  # pragma: no cover - compiled
    """c (B x n) = x (B x K) @ w (K x n, contiguous rows; its address) + beta c, row-major float32,
    by Fortran's sgemm as torch.mm calls it (c^T = w^T x^T in its column-major terms): bit for bit
    torch.mm's (torch.addmm's with c holding the bias and beta 1). dims (int32[7]: sizes, strides,
    the letter 'N') and scalars (float32[2]) are its scratch."""
    dims[0], dims[1], dims[2] = n, x.shape[0], x.shape[1]
    dims[3], dims[4], dims[5] = n, x.strides[0] // 4, c.strides[0] // 4
    dims[6] = 78  # "N": neither transposed
    scalars[0], scalars[1] = 1.0, beta
    d, s = dims.ctypes.data, scalars.ctypes.data
    letter = d + 24
    _sgemm(
        fn, letter, letter, d, d + 4, d + 8, s, w, d + 12, x.ctypes.data, d + 16, s + 4, c.ctypes.data, d + 20,
    )  # fmt: skip


@fastpath._inlined
def _mkl_product(fns, bf16, x, w, c, rows, dims, scalars):  # pragma: no cover - compiled
    """c[:rows] = x[:rows] @ w in float32 sums (w: the address of a K x N matrix with contiguous
    rows, N = c's width, in x's dtype): bfloat16 in blocks of decode.BF16_BLOCK_ROWS rows (x and c
    have whole blocks; decode.bf16_product says why), rounded to bfloat16; float32 as torch.mm
    multiplies the rows."""
    n = c.shape[1]
    if not bf16:
        _mkl_product_f32(fns[1], x[:rows], w, n, c[:rows], np.float32(0.0), dims, scalars)
        return
    block = BF16_BLOCK_ROWS
    for b in range(0, rows, block):
        _gemm_bf16(fns[0], block, n, x.shape[1], x[b:].ctypes.data, x.strides[0] // 2, w, n, c[b:].ctypes.data, n)
    for r in range(rows):
        fastpath._round_bf16(c[r], n)


BF16_BLOCK_ROWS = decode.BF16_BLOCK_ROWS
_GRU = fastpath.CELL_CODES["gru"]


@_compiled
def _decode_chunk_blas(
    fns, cell, bf16, table, wx, wh, bx, bh, fc, fc_bias, state, logits, inputs, prod, prod2,
    forced, n_forced, temperature, top_k, top_p, min_p, uniforms, remaining, out, unk, ex,
    stops, stop_len, tail, interrupt, interrupt_after,
):  # fmt: skip  # pragma: no cover - compiled
    """decode_chunk's steps in one compiled call, holding no GIL: MKL's products (fns: the
    functions' addresses) into prod (a GRU's recurrent part in prod2), _layer for the cells, the
    output layer by sgemm as torch.addmm computes it, _choose for the sampling. inputs (L, B', 2H):
    each layer's [x h] as the products read them (float32, or bfloat16 bits); wx, wh (L,): the
    addresses of the matrices they multiply (_BlasWeights)."""
    batch, vocab = logits.shape
    layers, hidden = wh.shape[0], state.shape[2]
    gru = cell == _GRU
    dims = np.zeros(7, np.int32)
    scalars = np.zeros(2, np.float32)
    ids = np.zeros(batch, np.int64)
    rows = np.empty(batch, np.int64)
    x = np.empty(vocab, np.float64)
    ranked = np.empty(vocab, np.float64)
    last_h = state[layers - 1]
    has_stops = stop_len[:, 0].max() > 0
    steps = 0
    for t in range(out.shape[1]):
        if t >= interrupt_after and interrupt[0] != 0:  # set by another thread (a request arrived)
            break
        n = fastpath._choose(
            t, logits, forced, n_forced, temperature, top_k, top_p, min_p, uniforms, remaining, out, unk, ex,
            ids, rows, x, ranked,
        )  # fmt: skip
        if n < 0:
            break
        steps = t + 1
        if n == 0:
            break
        for k in range(layers):
            own = inputs[k]
            if k == 0:  # h @ W_hh (the input part is a table row, added by the cell)
                _mkl_product(fns, bf16, own[:, hidden:], wh[0], prod2 if gru else prod, batch, dims, scalars)
            elif not gru:  # one sum: [x h] @ [W_ih; W_hh]
                _mkl_product(fns, bf16, own, wx[k], prod, batch, dims, scalars)
            else:  # the reset gate scales only the recurrent part: the two apart
                _mkl_product(fns, bf16, own[:, :hidden], wx[k], prod, batch, dims, scalars)
                _mkl_product(fns, bf16, own[:, hidden:], wh[k], prod2, batch, dims, scalars)
            upper = inputs[k + 1] if k + 1 < layers else own
            _layer(cell, k, layers, table, bx, bh, ids, state, prod, prod2, own, upper)
        for r in range(batch):
            logits[r] = fc_bias
        _mkl_product_f32(fns[1], last_h, fc.ctypes.data, vocab, logits, np.float32(1.0), dims, scalars)
        if has_stops and fastpath._a_row_stopped(t, n_forced, remaining, out, stops, stop_len, tail):
            break  # a row ended at a stop string: its request is answered at once
        if fastpath._any_ended(ex):
            break  # ... or at its regex
    return steps


class _Buffers:
    """The products' inputs and outputs for one call, as torch tensors and NumPy views of the same memory."""

    def __init__(self, model, w: decode.DecodeWeights, state: torch.Tensor, dtype: torch.dtype):
        fw = fastpath.fast_weights(model, dtype)
        layers, batch, hidden = fw.layers, state.shape[1], state.shape[2]
        gh = fw.table.shape[1]
        gru = fw.cell == fastpath.CELL_CODES["gru"]
        self.dtype = dtype
        self.model = model
        if dtype == torch.bfloat16:  # whole blocks of rows (decode.bf16_product); the padding rows stay zero
            batch = -(-batch // decode.BF16_BLOCK_ROWS) * decode.BF16_BLOCK_ROWS
        # per layer: the matrices multiplied, and where their input rows live
        # (layer 0: its h; deeper: [x h] for one product, or x and h apart for a GRU)
        # (input, weight, output: float32's fixed buffer; bf16_product returns its own)
        self.plan: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]] = []
        self.inputs: list[np.ndarray] = []  # per layer: the buffer whose last H columns are its own h
        self.lower_out: list[np.ndarray] = []  # per layer >= 1: the buffer whose first H columns are its x
        self.prod: list[tuple[np.ndarray, np.ndarray]] = []  # float32: the output buffers, as _layer reads them
        for k in range(layers):
            if k == 0:
                h_in = self._tensor(batch, hidden)
                self.plan.append([(h_in, w.w_hh[0], self._out(batch, gh))])
                x_in = None
            elif gru:
                x_in, h_in = self._tensor(batch, hidden), self._tensor(batch, hidden)
                self.plan.append(
                    [
                        (x_in, w.w_ih[k], self._out(batch, gh)),
                        (h_in, w.w_hh[k], self._out(batch, gh)),
                    ]
                )
            else:
                h_in = x_in = self._tensor(batch, 2 * hidden)  # [x h]: one product with W_cat
                w_cat = w.w_cat[k]
                assert w_cat is not None  # None only for layer 0
                self.plan.append([(x_in, w_cat, self._out(batch, gh))])
            self.inputs.append(self._np(h_in))
            if x_in is not None:
                self.lower_out.append(self._np(x_in))
            # the summed products, and a GRU's recurrent part apart (its layer 0 has only that one:
            # the input part is a table row); other cells' one sum is both
            outs = [self._np(out) for _, _, out in self.plan[k] if out is not None]
            if outs:
                self.prod.append((outs[0], outs[-1]))
        for k in range(layers):  # each layer's own h (rounded), read by the first step's products
            own = self.inputs[k]
            own[: state.shape[1], own.shape[1] - hidden :] = self._narrow_all(state[k].numpy())

    def multiply(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer k's products from its input buffers: the summed products and a GRU's recurrent
        part apart (other cells' one sum is both), as _layer reads them. float32: torch.mm into
        fixed buffers; bf16: decode.bf16_product's own result (a block of rows is not copied)."""
        if self.dtype == torch.float32:
            for x, weight, out in self.plan[k]:
                torch.mm(x, weight, out=out)
            return self.prod[k]
        outs = [self._np(decode.bf16_product(self.model, x, weight)) for x, weight, _ in self.plan[k]]
        return outs[0], outs[-1]

    def _out(self, *shape: int) -> torch.Tensor | None:
        return self._tensor(*shape) if self.dtype == torch.float32 else None

    def _tensor(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype)  # the padding rows of bf16 blocks stay zero

    def _np(self, t: torch.Tensor) -> np.ndarray:
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()

    def _narrow_all(self, x: np.ndarray) -> np.ndarray:
        if self.dtype == torch.bfloat16:
            return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return x


@dataclasses.dataclass(frozen=True)
class _BlasWeights:
    """The addresses of the decode weights' matrices (K, G*H), as _decode_chunk_blas multiplies
    them, per layer: wx the one its [x h] (layers >= 1; a GRU: its x) multiplies, [W_ih; W_hh]
    transposed (decode.DecodeWeights.w_cat; a GRU's W_ih), wh W_hh (layer 0's, a GRU's). No copy:
    `keep` holds the tensors (they live as long as the decode weights they come from)."""

    wx: np.ndarray  # (L,) int64; 0 for layer 0
    wh: np.ndarray  # (L,) int64
    keep: tuple


def _blas_weights(model, dtype: torch.dtype) -> _BlasWeights:
    """Cached with decode_weights (rebuilt whenever a parameter changes)."""
    w = decode.decode_weights(model, dtype)
    cached = decode.extra(model, dtype, "blas")
    if cached is not None:
        return cached
    gru = model.config.cell == "gru"
    wx = [None] + [w.w_ih[k] if gru else w.w_cat[k] for k in range(1, len(w.w_hh))]
    for m in (*wx[1:], *w.w_hh):
        assert m is not None and m.is_contiguous() and m.dtype == dtype
    built = _BlasWeights(
        wx=np.array([0 if m is None else m.data_ptr() for m in wx], np.int64),
        wh=np.array([m.data_ptr() for m in w.w_hh], np.int64),
        keep=(w,),
    )
    decode.extra(model, dtype, "blas", built)
    return built


def decode_chunk(
    model, dtype: torch.dtype, state: torch.Tensor, logits: torch.Tensor, chunk: fastpath.Chunk, mkl: bool | None = None
) -> int:
    """The steps of `chunk` for a large batch: state (R, B, H) and logits (B, V) (float32,
    contiguous) updated in place. Returns the steps taken. A row that finished has stale state
    and logits. With MKL (`mkl`, by default blas.usable(dtype)), one compiled call of all the
    steps; else torch's products driven from here, a step at a time."""
    if blas.usable(dtype) if mkl is None else mkl:
        return _decode_chunk_with_blas(model, dtype, state, logits, chunk)
    return _decode_chunk_with_torch(model, dtype, state, logits, chunk)


def _decode_chunk_with_blas(model, dtype, state, logits, chunk: fastpath.Chunk) -> int:
    fw = fastpath.fast_weights(model, dtype)
    bw = _blas_weights(model, dtype)
    batch, hidden = state.shape[1], state.shape[2]
    bf16 = dtype == torch.bfloat16
    rows = -(-batch // BF16_BLOCK_ROWS) * BF16_BLOCK_ROWS if bf16 else batch  # whole blocks; padding stays zero
    gates = fw.table.shape[1]
    inputs = torch.zeros(fw.layers, rows, 2 * hidden, dtype=dtype)
    inputs[:, :batch, hidden:] = state[: fw.layers]  # each layer's own h (rounded), read by the first products
    inputs_np = inputs.view(torch.int16).numpy().view(np.uint16) if bf16 else inputs.numpy()
    prod = np.zeros((rows, gates), np.float32)
    prod2 = np.zeros((rows, gates), np.float32) if fw.cell == _GRU else prod
    return _decode_chunk_blas(
        blas.functions(), fw.cell, bf16, fw.table, bw.wx, bw.wh, fw.bx, fw.bh, fw.fc[0], fw.fc_bias,
        state.numpy(), logits.numpy(), inputs_np, prod, prod2, *chunk.args(), *chunk.stop_args(),
        chunk.interrupt, chunk.interrupt_after,
    )  # fmt: skip


def _decode_chunk_with_torch(model, dtype, state, logits, chunk: fastpath.Chunk) -> int:
    fw = fastpath.fast_weights(model, dtype)
    w = decode.decode_weights(model, dtype)
    buffers = _Buffers(model, w, state, dtype)
    state_np, logits_np = state.numpy(), logits.numpy()
    batch, vocab = logits.shape
    layers = fw.layers
    ids = np.zeros(batch, np.int64)
    rows = np.empty(batch, np.int64)
    x = np.empty(vocab, np.float64)
    ranked = np.empty(vocab, np.float64)
    last_h = state[layers - 1]  # (B, H): the output layer's input, a view updated in place
    fc_bias = model.fc.bias.detach()
    no_upper = buffers.inputs[0][:, :0]
    steps = 0
    chosen = chunk.args()
    stops, has_stops = chunk.stop_args(), chunk.has_stops
    regex_ended = chunk.extras.ended if chunk.extras is not None else None
    for t in range(chunk.out.shape[1]):
        if t >= chunk.interrupt_after and chunk.interrupt[0]:  # set by another thread (a request arrived)
            break
        n = fastpath._choose(t, logits_np, *chosen, ids, rows, x, ranked)
        if n < 0:
            break
        steps = t + 1
        if n == 0:
            break
        for k in range(layers):
            prod1, prod2 = buffers.multiply(k)
            upper = buffers.lower_out[k] if k + 1 < layers else no_upper
            _layer(
                fw.cell, k, layers, fw.table, fw.bx, fw.bh, ids, state_np, prod1, prod2,
                buffers.inputs[k], upper,
            )  # fmt: skip
        torch.addmm(fc_bias, last_h, w.fc, out=logits)
        if has_stops and fastpath._a_row_stopped(t, chunk.n_forced, chunk.remaining, chunk.out, *stops):
            break  # a row ended at a stop string: its request is answered at once
        if regex_ended is not None and regex_ended.any():
            break  # ... or at its regex
    return steps


def warm(model, dtype: torch.dtype) -> None:
    """Compiles (or loads from numba's disk cache) this path's code for this dtype: two rows, two
    steps, without extras and with them."""
    cfg = model.config
    rows = 2
    state = torch.zeros(cfg.state_rows, rows, cfg.hidden_size)
    logits = torch.zeros(rows, cfg.vocab_size)
    with torch.inference_mode():
        decode_chunk(model, dtype, state, logits, fastpath.Chunk.trial(rows))
        decode_chunk(model, dtype, state, logits, fastpath.Chunk.trial(rows, cfg.vocab_size))
