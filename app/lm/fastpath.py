"""Decoding on the CPU without leaving compiled code: many steps, sampling included, per call.

A character model takes one step per character, and a step of a small model costs less than
Python's own overhead of calling torch a dozen times. `decode_chunk` runs up to K steps for a
batch of rows in one call of compiled code (numba): it samples each row's next character from
its logits (greedy, or temperature with top-k, top-p and min-p, drawing from the row's own
random numbers, passed in), then steps every row that continues. Pre-allocated buffers, no
Python per character.

The maths is decode.step's (app/lm/decode.py builds the weights for both and stays the
reference the tests compare this with): layer 0's input projection is a table lookup, the
LSTM's cell-input rows come doubled, and bfloat16 means the products' inputs and results are
rounded to bfloat16 with float32 sums. Here the bfloat16 matrices are kept as 2 bytes per
weight and widened in registers, so a step reads half the bytes of float32. The cells' sigmoid
and tanh come from a float32 exp in plain arithmetic (within 2 ulp), so their loops vectorise.

Each row's arithmetic is the same whatever else is in the call: a batch is looped over inside
each block of eight weight rows (so each weight is read once per step for all rows), and each
row sums its products in the same order alone or batched.

Sampling follows sampling._draw exactly, in float64, with the same random number per sampled
character. Rows with a logit bias, penalties, a regex or log-probabilities are sampled here too
(Extras: sampling.sample_next's steps for them, in compiled code); a call without such rows
compiles to code without them (the `_sample` overload).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _cache_dir_ready() -> bool:
    """Numba keeps compiled code on disk so that a process loads it instead of compiling (about
    10 s per dtype): in NUMBA_CACHE_DIR where that is set and writable, else beside this file
    where that is writable, else in the temporary directory (a read-only image or root
    filesystem), else nowhere (every process compiles). Numba refuses a cache it cannot write."""

    def writable(path: Path) -> bool:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(path, os.W_OK)

    chosen = os.environ.get("NUMBA_CACHE_DIR")
    if chosen and writable(Path(chosen)):
        return True
    os.environ.pop("NUMBA_CACHE_DIR", None)
    beside = Path(__file__).parent / "__pycache__"
    if os.access(beside if beside.exists() else beside.parent, os.W_OK):
        return True
    elsewhere = Path(tempfile.gettempdir()) / "charrnn-numba-cache"
    if not writable(elsewhere):
        return False
    os.environ["NUMBA_CACHE_DIR"] = str(elsewhere)  # read when numba is imported, just below
    return True


def _full_width_vectors() -> None:
    """LLVM tunes code for AVX-512 CPUs (Skylake-X to Sapphire Rapids) to prefer 256-bit vectors,
    against the clock slowdown some of them take on 512-bit ones; this code's loops are dense
    multiply-adds on one core, where the full width wins (measured on a 2-core Xeon with AMX: a
    bf16 step of the 2x256 LSTM 54-58 us -> 41-44 us). Numba reads NUMBA_CPU_FEATURES when it
    compiles; one set by the user is left as it is. No effect on a CPU without AVX-512."""
    if "NUMBA_CPU_FEATURES" in os.environ:
        return
    from llvmlite import binding  # type: ignore[import-untyped]

    try:
        features = binding.get_host_cpu_features().flatten()
    except RuntimeError:  # a platform where LLVM cannot tell
        return
    if "+avx512f" in features.split(","):
        os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"


CACHE = _cache_dir_ready()
_full_width_vectors()

import numba  # noqa: E402  (after NUMBA_CACHE_DIR and NUMBA_CPU_FEATURES are settled)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.extending import intrinsic as _intrinsic  # noqa: E402
from numba.extending import overload as _overload  # noqa: E402

from app.lm import decode  # noqa: E402
from app.lm.model import CharRNN  # noqa: E402

# numba's decorators, untyped for mypy: compiled functions take the arguments their Python source names
_njit: Any = numba.njit
intrinsic: Any = _intrinsic
overload: Any = _overload


# error_model="numpy": a float division by zero gives inf instead of raising, so loops with a
# division (the sigmoids) have no exception branch and run in vector registers
def _compiled(fn):
    return _njit(cache=CACHE, nogil=True, error_model="numpy")(fn)


def _inlined(fn):
    """A small helper, inlined where it is called (so that loops around it stay vectorisable)."""
    return _njit(cache=CACHE, nogil=True, error_model="numpy", inline="always")(fn)


CELL_CODES = {"rnn": 0, "lstm": 1, "gru": 2}
_EMPTY_F32 = np.zeros((1, 1, 1), np.float32)
_EMPTY_U16 = np.zeros((1, 1, 1), np.uint16)


@dataclasses.dataclass(frozen=True)
class FastWeights:
    """decode.DecodeWeights as NumPy arrays for the compiled step (views of the same memory where possible).

    Matrices are stacked per layer: wh (L, H, G*H) the recurrent ones, wx (L-1, H, G*H) the input
    ones of layers >= 1, in float32 or (bf16) as bfloat16 bits in uint16: half the bytes to read."""

    cell: int
    bf16: bool
    table: np.ndarray  # (V, G*H) float32
    wh: np.ndarray
    wx: np.ndarray
    bx: np.ndarray  # (L, G*H) float32: input-side bias of layers >= 1 (b_ih + b_hh where not a GRU)
    bh: np.ndarray  # (L, G*H) float32: a GRU's recurrent bias (zeros for other cells)
    fc: np.ndarray  # (1, H, V) float32
    fc_bias: np.ndarray  # (V,) float32
    hidden: int
    layers: int

    @property
    def matrix_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every matrix a one-row step multiplies: what one step reads."""
        gh = self.table.shape[1]
        shapes = [(self.hidden, gh)] * self.layers + [(self.hidden, gh)] * (self.layers - 1)
        return shapes + [self.fc.shape[1:]]

    def args(self) -> tuple:
        return (self.cell, self.bf16, self.table, self.wh, self.wx, self.bx, self.bh, self.fc, self.fc_bias)


def supports(model: CharRNN, dtype: torch.dtype) -> bool:
    """Whether decode_chunk can decode this model in this dtype: CPU, float32 or bfloat16."""
    return model.fc.weight.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _stack(mats: list[torch.Tensor], bf16: bool) -> np.ndarray:
    if not mats:
        return _EMPTY_U16 if bf16 else _EMPTY_F32
    stacked = torch.stack([m.contiguous() for m in mats])
    if bf16:
        return stacked.view(torch.int16).numpy().view(np.uint16)
    return stacked.float().numpy()


def fast_weights(model: CharRNN, dtype: torch.dtype) -> FastWeights:
    """Built from decode_weights (and cached with it: rebuilt whenever a parameter changes)."""
    w = decode.decode_weights(model, dtype)
    cached = decode.extra(model, dtype, "fast")
    if cached is not None:
        return cached
    cfg = model.config
    bf16 = dtype == torch.bfloat16
    layers, hidden = cfg.num_layers, cfg.hidden_size
    gh = w.input_table.shape[1]
    wh = list(w.w_hh)
    wx = list(w.w_ih[1:])
    bx = np.zeros((layers, gh), np.float32)
    bh = np.zeros((layers, gh), np.float32)
    for k in range(1, layers):
        bx[k] = _np(w.b_ih[k] if cfg.cell == "gru" else w.bias[k])  # type: ignore[arg-type]
    if cfg.cell == "gru":
        for k in range(layers):
            bh[k] = _np(w.b_hh[k])
    fw = FastWeights(
        cell=CELL_CODES[cfg.cell],
        bf16=bf16,
        table=_np(w.input_table.float()),
        wh=_stack(wh, bf16),
        wx=_stack(wx, bf16),
        bx=bx,
        bh=bh,
        fc=_np(w.fc.float())[None],
        fc_bias=_np(model.fc.bias.float()),
        hidden=hidden,
        layers=layers,
    )
    decode.extra(model, dtype, "fast", fw)
    return fw


# ---- compiled code ------------------------------------------------------------------------------


@_inlined
def _bf16_rounded(b):  # pragma: no cover - compiled
    """A float32's bits (uint32) rounded to the nearest bfloat16, ties to even: its bits in the top half."""
    return (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


@_compiled
def _round_bf16(x, n):  # pragma: no cover - compiled
    """Rounds x[:n] (float32) to the nearest bfloat16, ties to even, in place."""
    u = x.view(np.uint32)
    for j in range(n):
        u[j] = _bf16_rounded(u[j])


@intrinsic
def _widen(typingctx, v):  # pragma: no cover - compiled
    """A weight as float32: a bfloat16 (its uint16 bits) shifted into the top half, a float32 as it is."""
    if v == types.uint16:

        def codegen(context, builder, signature, args):
            wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
            return builder.bitcast(wide, ir.FloatType())

        return types.float32(v), codegen
    if v == types.float32:
        return types.float32(v), lambda context, builder, signature, args: args[0]
    return None


@_compiled
def _product(acc, x, rows, n, w, m):  # pragma: no cover - compiled
    """acc[r] += x[r] @ w[m] for the n rows listed in `rows` (w: float32, or bfloat16 as uint16).

    Eight weight rows at a time, applied to every listed row while they sit in L1: the weights
    are read once per step for the whole batch. Each row adds its eight products to its sum in a
    fixed order (no reassociation), so a row's result never depends on the others."""
    k_in = x.shape[1]
    width = acc.shape[1]
    k8 = k_in - k_in % 8
    for k in range(0, k8, 8):
        b = w[m, k : k + 8]  # one block: a single range for the compiler's overlap check
        for q in range(n):
            r = rows[q]
            xr = x[r]
            x0, x1, x2, x3 = xr[k], xr[k + 1], xr[k + 2], xr[k + 3]
            x4, x5, x6, x7 = xr[k + 4], xr[k + 5], xr[k + 6], xr[k + 7]
            a = acc[r]
            for j in range(width):
                a[j] = (
                    a[j] + x0 * _widen(b[0, j]) + x1 * _widen(b[1, j]) + x2 * _widen(b[2, j]) + x3 * _widen(b[3, j])
                    + x4 * _widen(b[4, j]) + x5 * _widen(b[5, j]) + x6 * _widen(b[6, j]) + x7 * _widen(b[7, j])
                )  # fmt: skip
    for k in range(k8, k_in):
        wk = w[m, k]
        for q in range(n):
            r = rows[q]
            xv = x[r, k]
            a = acc[r]
            for j in range(width):
                a[j] = a[j] + xv * _widen(wk[j])


@_compiled
def _fc(logits, x, rows, n, fc, fc_bias):  # pragma: no cover - compiled
    """logits[r] = fc_bias + x[r] @ fc[0] for the listed rows (always float32)."""
    for q in range(n):
        logits[rows[q]] = 0.0
    _product(logits, x, rows, n, fc, 0)
    for q in range(n):
        out = logits[rows[q]]
        for j in range(out.shape[0]):
            out[j] = out[j] + fc_bias[j]


@intrinsic
def _float_bits(typingctx, v):  # pragma: no cover - compiled
    """The float32 whose bits are the low 32 bits of the integer v."""
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        bits = args[0] if args[0].type.width == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def _bits(typingctx, v):  # pragma: no cover - compiled
    """The bits of a float32, as a uint32 (the inverse of _float_bits)."""
    if v != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(v), codegen


@_inlined
def _exp(x):  # pragma: no cover - compiled
    """exp(x) in float32 (Cephes' expf: within 2 ulp), in plain arithmetic so that a loop of them
    runs in vector registers (a call to libm's exp would not)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))  # float32 throughout
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _float_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@intrinsic
def _double_bits(typingctx, v):  # pragma: no cover - compiled
    """The float64 whose bits are the int64 v."""
    if v != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(v), codegen


@_inlined
def _exp_nonpositive(x):  # pragma: no cover - compiled
    """exp(x) in float64 for x <= 0 (-inf included, giving 0), within 1 ulp: fdlibm's exp (the
    algorithm of most C libraries) without its branches, so that a loop of them runs in vector
    registers where libm's exp is a call per element. Results below 2^-1022 (x < -708) are 0,
    where libm gives a subnormal: a probability no uniform number in [0, 1) can land on but 0."""
    d = max(x, -708.0)
    k = np.floor(d * 1.44269504088896338700 + 0.5)
    hi = d - k * 6.93147180369123816490e-01
    lo = k * 1.90821492927058770002e-10
    r = hi - lo
    t = r * r
    p = -1.65339022054652515390e-06 + t * 4.13813679705723846039e-08
    p = 6.61375632143793436117e-05 + t * p
    p = -2.77777777770155933842e-03 + t * p
    c = r - t * (1.66666666666666019037e-01 + t * p)
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    scaled = y * _double_bits((np.int64(k) + np.int64(1023)) << np.int64(52))
    return scaled if x >= -708.0 else 0.0


@_inlined
def _sigmoid(x):  # pragma: no cover - compiled
    return np.float32(1.0) / (np.float32(1.0) + _exp(-x))


@_inlined
def _tanh(x):  # pragma: no cover - compiled
    return np.float32(2.0) * _sigmoid(x + x) - np.float32(1.0)


@_inlined
def _layer_row(cell, layer, layers, table, bx, bh, char, p, p2, state, r):  # pragma: no cover - compiled
    """One row of one layer once its products are summed (and rounded as the dtype asks): p (G*H)
    the input and recurrent parts (a GRU's recurrent part apart, in p2), float32 or bfloat16 bits.
    Adds the biases (layer 0: the character's table row, biases included) as it reads them, and
    runs the cell into the layer's h (and an LSTM's c) of row r in state (R, B, H), in place."""
    hidden = state.shape[2]
    add = table[char] if layer == 0 else bx[layer]  # the input side's bias (layer 0: and its input)
    h = state[layer, r]
    if cell == 0:
        for j in range(hidden):
            h[j] = _tanh(_widen(p[j]) + add[j])
    elif cell == 1:
        c = state[layers + layer, r]
        one = np.float32(1.0)
        for j in range(hidden):
            # sigmoid(x) = 1 / (1 + e^-x) and, from the doubled rows, tanh(x) = (1 - e^-2x) / (1 + e^-2x):
            # i tanh(g~) and o tanh(c) each as one quotient, three divisions a unit instead of five
            # (the denominators are >= 1, and an overflow to inf gives the limit, 0)
            ei = _exp(-(_widen(p[j]) + add[j]))
            eg = _exp(-(_widen(p[2 * hidden + j]) + add[2 * hidden + j]))
            eo = _exp(-(_widen(p[3 * hidden + j]) + add[3 * hidden + j]))
            f = one / (one + _exp(-(_widen(p[hidden + j]) + add[hidden + j])))
            cj = f * c[j] + (one - eg) / ((one + ei) * (one + eg))
            c[j] = cj
            ec = _exp(-(cj + cj))
            h[j] = (one - ec) / ((one + eo) * (one + ec))
    else:  # GRU: layer 0's input part is its table row alone (p holds no products there)
        b = bh[layer]
        for j in range(hidden):
            xr, xz, xn = add[j], add[hidden + j], add[2 * hidden + j]
            if layer > 0:
                xr += _widen(p[j])
                xz += _widen(p[hidden + j])
                xn += _widen(p[2 * hidden + j])
            rg = _sigmoid(xr + (_widen(p2[j]) + b[j]))
            z = _sigmoid(xz + (_widen(p2[hidden + j]) + b[hidden + j]))
            nn = _tanh(xn + rg * (_widen(p2[2 * hidden + j]) + b[2 * hidden + j]))
            h[j] = nn + z * (h[j] - nn)


@_compiled
def _step_rows(
    cell, bf16, table, wh, wx, bx, bh, fc, fc_bias,
    ids, rows, n, state, logits, acc, acc2, xin, hin, products_only,
):  # fmt: skip  # pragma: no cover - compiled
    """decode.step for the listed rows: state (R, B, H) and logits (B, V) updated in place."""
    layers = wh.shape[0]
    hidden = state.shape[2]
    gh = table.shape[1]
    for layer in range(layers):
        for q in range(n):  # zero the accumulators; copy (and round) this layer's inputs
            r = rows[q]
            for j in range(gh):
                acc[r, j] = 0.0
            if cell == 2:  # only a GRU keeps its recurrent part apart
                for j in range(gh):
                    acc2[r, j] = 0.0
            for j in range(hidden):
                hin[r, j] = state[layer, r, j]
                if layer > 0:
                    xin[r, j] = state[layer - 1, r, j]
            if bf16:
                _round_bf16(hin[r], hidden)
                if layer > 0:
                    _round_bf16(xin[r], hidden)
        if cell == 2:  # GRU: input and recurrent parts apart (the reset gate scales only the latter)
            if layer > 0:
                _product(acc, xin, rows, n, wx, layer - 1)
            _product(acc2, hin, rows, n, wh, layer)
        else:  # one sum: input part (layers >= 1), then recurrent part
            if layer > 0:
                _product(acc, xin, rows, n, wx, layer - 1)
            _product(acc, hin, rows, n, wh, layer)
        if products_only:
            continue
        for q in range(n):
            r = rows[q]
            if bf16:
                _round_bf16(acc[r], gh)
                if cell == 2:
                    _round_bf16(acc2[r], gh)
            _layer_row(cell, layer, layers, table, bx, bh, ids[r], acc[r], acc2[r], state, r)
    for q in range(n):
        r = rows[q]
        for j in range(hidden):
            hin[r, j] = state[layers - 1, r, j]
    _fc(logits, hin, rows, n, fc, fc_bias)


RANK_BY_COUNTING = 128  # vocabularies up to this size are ordered by counting, larger ones sorted


@_inlined
def _descending(x, v, ranked):  # pragma: no cover - compiled
    """ranked[:v] = x[:v] (probabilities, >= 0) largest first. A small vocabulary puts each value
    where the count of larger values says: no branch to mispredict (a sort's comparisons of fresh logits every
    step mispredict half the time, several times the cost) and loops that run in vector registers."""
    if v > RANK_BY_COUNTING:
        for j in range(v):
            ranked[j] = -x[j]
        ranked[:v].sort()
        for j in range(v):
            ranked[j] = -ranked[j]
        return
    for j in range(v):
        ranked[j] = -1.0  # probabilities are >= 0: -1 marks a place not yet filled
    for j in range(v):
        xj = x[j]
        larger = np.int64(0)
        for i in range(v):
            larger += np.int64(x[i] > xj)
        ranked[larger] = xj  # equal values land on one place: the first of theirs
    for j in range(1, v):
        if ranked[j] < 0.0:  # the rest of a run of equal values
            ranked[j] = ranked[j - 1]


@_compiled
def _sample_row(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked):  # pragma: no cover - compiled
    """sampling._draw (or the argmax) for one row, in float64: the same choice for the same number."""
    v = logits.shape[0]
    for j in range(v):
        x[j] = logits[j]
    x[unk] = -np.inf
    if temperature <= 0.0:
        best = 0
        for j in range(1, v):
            if x[j] > x[best]:
                best = j
        return best
    top = -np.inf
    for j in range(v):
        x[j] = x[j] / temperature
        if x[j] > top:
            top = x[j]
    for j in range(v):
        x[j] = _exp_nonpositive(x[j] - top)
    k = top_k if top_k > 0 else v
    if k < v or top_p < 1.0 or min_p > 0.0:
        _descending(x, v, ranked)
        total = 0.0
        for j in range(v):
            total += ranked[j]
        kept = 0
        run = 0.0
        for j in range(v):
            run += ranked[j]
            if (run - ranked[j]) / total < top_p:
                kept += 1
        kept = min(kept, k)
        cutoff = max(ranked[kept - 1], min_p * ranked[0])
        for j in range(v):
            if x[j] < cutoff:
                x[j] = 0.0
    cdf = 0.0
    for j in range(v):
        cdf += x[j]
        x[j] = cdf
    target = u * cdf
    for j in range(v):
        if x[j] > target:
            return j
    return 0


@_compiled
def _sample_row_with_extras(
    logits, temperature, top_k, top_p, min_p, u, unk, x, ranked, ex, r, p
):  # pragma: no cover - compiled
    """_sample_row for a row with extras (Extras, as the tuple `ex`), row r's p-th character:
    its logit bias and penalties first (sampling.Sequence.adjust), its regex's mask, then the same
    choice; the character's log-probability and alternatives recorded (sampling._record_logprobs),
    and the penalties' counts and the regex's state updated with it."""
    (_, bias, repetition, window, ring, ring_fill, ring_pos, seen, presence, frequency, counts,
     n_logprobs, logprob, top_ids, top_logprobs, regex_state, next_state, allowed, final, dead, ended) = ex  # fmt: skip
    v = logits.shape[0]
    b = bias[r]
    for j in range(v):
        x[j] = logits[j] + b[j]
    x[unk] = -np.inf
    penalty = repetition[r]
    if penalty != 1.0:
        s = seen[r]
        for j in range(v):
            if s[j] > 0:
                x[j] = x[j] / penalty if x[j] > 0 else x[j] * penalty
    fp, pp = frequency[r], presence[r]
    if fp != 0.0 or pp != 0.0:
        c = counts[r]
        for j in range(v):
            x[j] -= fp * c[j] + pp * (1.0 if c[j] > 0 else 0.0)
    state = regex_state[r]
    if state >= 0 and not final[state]:  # only what keeps the text a prefix of a match (at a full
        ok = allowed[state]  # match: anything, and a character that cannot continue it ends it)
        for j in range(v):
            if not ok[j]:
                x[j] = -np.inf
    i = _sample_row(x, temperature, top_k, top_p, min_p, u, unk, x, ranked)  # x: the adjusted logits
    if state >= 0:
        if not allowed[state, i]:  # at a full match: END
            ended[r] = True
            return -1
        state = next_state[state, i]
        regex_state[r] = state
        ended[r] = dead[state]
    if n_logprobs[r] >= 0:
        _record_logprobs(logits, unk, i, n_logprobs[r], x, logprob[r], top_ids[r], top_logprobs[r], p)
    if penalty != 1.0:  # i joins the window, whose oldest id leaves once it is full
        w = window[r]
        if w > 0:
            if ring_fill[r] == w:
                seen[r, ring[r, ring_pos[r]]] -= 1
                ring[r, ring_pos[r]] = i
                ring_pos[r] = (ring_pos[r] + 1) % w
            else:
                ring[r, ring_fill[r]] = i
                ring_fill[r] += 1
        seen[r, i] += 1
    if fp != 0.0 or pp != 0.0:
        counts[r, i] += 1.0
    return i


@_inlined
def _record_logprobs(logits, unk, chosen, n, x, logprob, top_ids, top_logprobs, p):  # pragma: no cover - compiled
    """The model's own log-probabilities (score.log_probs: temperature 1, before bias and penalties)
    of step p's character and of its n likeliest alternatives (score.top_alternatives: never unk,
    likeliest first, the lower id first among equals), into row arrays logprob (K,), top_ids and
    top_logprobs (K, M). x is scratch."""
    v = logits.shape[0]
    top = -np.inf
    for j in range(v):
        if logits[j] > top:
            top = logits[j]
    total = 0.0
    for j in range(v):
        x[j] = _exp_nonpositive(np.float64(logits[j]) - top)
        total += x[j]
    norm = top + np.log(total)
    logprob[p] = logits[chosen] - norm
    for j in range(v):
        x[j] = logits[j]
    x[unk] = -np.inf
    for k in range(min(n, v - 1)):
        best = 0
        for j in range(1, v):
            if x[j] > x[best]:
                best = j
        top_ids[p, k] = best
        top_logprobs[p, k] = x[best] - norm
        x[best] = -np.inf  # not taken again (every other logit is finite)


def _sample(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked, ex, r, p):  # pragma: no cover
    """Row r's p-th character: _sample_row, or _sample_row_with_extras where the row has extras
    (Extras as the tuple `ex`; None where no row has any). Replaced by its compiled overload."""
    raise NotImplementedError


@overload(_sample, inline="always")
def _sample_compiled(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked, ex, r, p):  # pragma: no cover
    if isinstance(ex, types.NoneType):  # no row has extras: a call's code without them

        def plain(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked, ex, r, p):
            return _sample_row(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked)

        return plain

    def either(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked, ex, r, p):
        if ex[0][r]:
            return _sample_row_with_extras(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked, ex, r, p)
        return _sample_row(logits, temperature, top_k, top_p, min_p, u, unk, x, ranked)

    return either


def _ended(ex, r):  # pragma: no cover - replaced by its compiled overload
    """Whether row r just ended at its regex (never, where no row has extras: ex is None)."""
    raise NotImplementedError


@overload(_ended, inline="always")
def _ended_compiled(ex, r):  # pragma: no cover - compiled
    if isinstance(ex, types.NoneType):
        return lambda ex, r: False
    return lambda ex, r: ex[-1][r]


def _any_ended(ex):  # pragma: no cover - replaced by its compiled overload
    """Whether any row just ended at its regex (never, where no row has extras: ex is None)."""
    raise NotImplementedError


@overload(_any_ended, inline="always")
def _any_ended_compiled(ex):  # pragma: no cover - compiled
    if isinstance(ex, types.NoneType):
        return lambda ex: False
    return lambda ex: ex[-1].any()


@_compiled
def _a_row_stopped(t, n_forced, remaining, out, stops, stop_len, tail):  # pragma: no cover - compiled
    """Whether a row's character of step t completes one of its stop strings (a row that goes on
    past it, fed that step, is stopped by its caller, who finds the stop in the text and trims it).
    A row's stop strings are stops[r, s, :stop_len[r, s]] (ids, from the first slot on), its
    characters before this call tail[r] (the last at the end; -1 where there were none)."""
    before = tail.shape[1]
    for r in range(out.shape[0]):
        p = t - n_forced[r]  # the row's character of this step
        if p < 0 or p >= remaining[r] or stop_len[r, 0] == 0:
            continue
        for s in range(stop_len.shape[1]):
            m = stop_len[r, s]
            if m == 0:
                break
            match = True
            for j in range(m):
                k = p - m + 1 + j
                c = out[r, k] if k >= 0 else tail[r, before + k]
                if c != stops[r, s, j]:
                    match = False
                    break
            if match:
                return True
    return False


@_compiled
def _choose(
    t, logits, forced, n_forced, temperature, top_k, top_p, min_p, uniforms, remaining, out, unk, ex, ids, rows, x,
    ranked,
):  # fmt: skip  # pragma: no cover - compiled
    """Step t's input of every row: its next prefix character while it has one (nothing sampled),
    else the character it samples from its logits (out[r, p], drawn with uniforms[r, p]) if it has
    characters left. Lists in rows[:n] the rows to step (those that go on) and returns n, or -1
    when no row sampled or read anything. (_decode_chunk has this loop written out.)"""
    batch = logits.shape[0]
    n = 0
    active = False
    for r in range(batch):
        p = t - n_forced[r]  # position among the row's sampled characters
        if p < 0:  # a prefix character still to read: fed, nothing sampled
            ids[r] = forced[r, t]
            rows[n] = r
            n += 1
        elif p < remaining[r]:
            i = _sample(
                logits[r], temperature[r], top_k[r], top_p[r], min_p[r], uniforms[r, p], unk, x, ranked, ex, r, p
            )
            out[r, p] = i
            ids[r] = max(i, 0)  # (END, -1: the row is not fed)
            active = True
            if p + 1 < remaining[r] and not _ended(ex, r):  # it goes on: feed the character
                rows[n] = r
                n += 1
    return n if n > 0 or active else -1


@_compiled
def _buffers(batch, gates, hidden):  # pragma: no cover - compiled
    """_step_rows's scratch: the gate sums (two, for a GRU's parts) and the layer's inputs, per row."""
    acc = np.empty((batch, gates), np.float32)
    acc2 = np.empty((batch, gates), np.float32)
    return acc, acc2, np.empty((batch, hidden), np.float32), np.empty((batch, hidden), np.float32)


@_compiled
def _decode_chunk(
    cell, bf16, table, wh, wx, bx, bh, fc, fc_bias,
    state, logits, forced, n_forced, temperature, top_k, top_p, min_p, uniforms, remaining, out, unk, ex,
    stops, stop_len, tail, interrupt, interrupt_after,
):  # fmt: skip  # pragma: no cover - compiled
    batch = logits.shape[0]
    chunk = out.shape[1]
    vocab = logits.shape[1]
    acc, acc2, xin, hin = _buffers(batch, table.shape[1], state.shape[2])
    x = np.empty(vocab, np.float64)
    ranked = np.empty(vocab, np.float64)
    ids = np.zeros(batch, np.int64)
    rows = np.empty(batch, np.int64)
    steps = 0
    has_stops = stop_len[:, 0].max() > 0
    regex_end = False
    for t in range(chunk):
        if t >= interrupt_after and interrupt[0] != 0:  # set by another thread (a request arrived)
            break
        # _choose(t, ...) written out: as a call (inlined or not) it cost the default model's step
        # a third more (1.86M -> 1.3M chars/s); fastpath_large, a step of many rows, calls it
        n = 0
        for r in range(batch):
            p = t - n_forced[r]
            if p < 0:
                ids[r] = forced[r, t]
                rows[n] = r
                n += 1
            elif p < remaining[r]:
                i = _sample(
                    logits[r], temperature[r], top_k[r], top_p[r], min_p[r], uniforms[r, p], unk, x, ranked, ex, r, p
                )
                out[r, p] = i
                ids[r] = i
                steps = t + 1
                if _ended(ex, r):
                    regex_end = True
                elif p + 1 < remaining[r]:
                    rows[n] = r
                    n += 1
        if n == 0:
            break
        steps = t + 1
        _step_rows(
            cell, bf16, table, wh, wx, bx, bh, fc, fc_bias,
            ids, rows, n, state, logits, acc, acc2, xin, hin, False,
        )  # fmt: skip
        if regex_end or (has_stops and _a_row_stopped(t, n_forced, remaining, out, stops, stop_len, tail)):
            break  # a row ended at its regex or a stop string: its request is answered at once
    return steps


@_compiled
def _step_only(
    cell, bf16, table, wh, wx, bx, bh, fc, fc_bias, ids, state, logits, products_only, repeats
):  # pragma: no cover - compiled
    batch = logits.shape[0]
    acc, acc2, xin, hin = _buffers(batch, table.shape[1], state.shape[2])
    rows = np.arange(batch)
    for _ in range(repeats):
        _step_rows(
            cell, bf16, table, wh, wx, bx, bh, fc, fc_bias,
            ids, rows, batch, state, logits, acc, acc2, xin, hin, products_only,
        )  # fmt: skip


# ---- Python entry points --------------------------------------------------------------------------


def step(model: CharRNN, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype = torch.float32):
    """decode.step through the compiled code (for tests and benches): same arguments, same results
    within float rounding."""
    fw = fast_weights(model, dtype)
    st = state.detach().float().contiguous().clone()
    logits = np.empty((ids.shape[0], model.config.vocab_size), np.float32)
    _step_only(*fw.args(), ids.numpy().astype(np.int64), st.numpy(), logits, False, 1)
    return torch.from_numpy(logits), st


def time_steps(model: CharRNN, dtype: torch.dtype, batch: int, repeats: int, products_only: bool) -> float:
    """Seconds per step of `batch` rows: the whole step, or its matrix products alone (for the benches)."""
    fw = fast_weights(model, dtype)
    state = np.zeros((model.config.state_rows, batch, model.config.hidden_size), np.float32)
    logits = np.empty((batch, model.config.vocab_size), np.float32)
    ids = np.ones(batch, np.int64)
    _step_only(*fw.args(), ids, state, logits, products_only, 1)  # compiled and warm
    start = time.perf_counter()
    _step_only(*fw.args(), ids, state, logits, products_only, repeats)
    return (time.perf_counter() - start) / repeats


@dataclasses.dataclass
class Extras:
    """What rows with a logit bias, penalties, a regex or log-probabilities take into a call of
    the CPU's compiled paths (what sampling.sample_next does for them, in compiled code): B rows,
    V ids, up to K characters a row, M alternatives. The penalties' and the regex's arrays are
    the call's own working copies, updated as it samples; the caller updates each sequence from
    the characters it took. A row that ends at its regex samples sampling.END (-1) or reaches a
    dead state; the call ends after that step, as at a stop string."""

    on: np.ndarray  # (B,) bool: the row has extras (the others are sampled as if these were absent)
    bias: np.ndarray  # (B, V) float64: added to the logits
    repetition: np.ndarray  # (B,) float64: the repetition penalty; 1 = off
    window: np.ndarray  # (B,) int64: ids the repetition penalty looks back on (ring's length); <= 0: all
    ring: np.ndarray  # (B, W) int64: the window's ids, oldest at ring_pos once it is full
    ring_fill: np.ndarray  # (B,) int64
    ring_pos: np.ndarray  # (B,) int64
    seen: np.ndarray  # (B, V) int64: how often each id is in the window
    presence: np.ndarray  # (B,) float64
    frequency: np.ndarray  # (B,) float64
    counts: np.ndarray  # (B, V) float64: how often each id was generated
    n_logprobs: np.ndarray  # (B,) int64: alternatives to report; -1 = no log-probabilities
    logprob: np.ndarray  # (B, K) float32: each character's log-probability
    top_ids: np.ndarray  # (B, K, M) int64: its likeliest alternatives
    top_logprobs: np.ndarray  # (B, K, M) float32: theirs
    # a regex: the rows' automata (constraint.CharAutomaton) stacked, S states in all
    regex_state: np.ndarray  # (B,) int64: the row's state among the stacked ones; -1 = no regex
    next_state: np.ndarray  # (S, V) int64: the state after an id (among the stacked ones); -1 = not allowed
    allowed: np.ndarray  # (S, V) bool
    final: np.ndarray  # (S,) bool: the text so far is a full match
    dead: np.ndarray  # (S,) bool: final, and nothing can follow (the row ends)
    ended: np.ndarray  # (B,) bool, set by the call: the row ended at its regex (END, or a dead state)

    def args(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @classmethod
    def trial(cls, rows: int, vocab: int, steps: int) -> Extras:
        """Every row with every extra (a bias, both penalties, a window, a regex whose one state
        allows everything, two alternatives), in the types generate's Extras have: warming with
        it compiles the code a request with extras runs (numba compiles per argument types)."""
        f, i = (lambda *shape: np.zeros(shape)), (lambda *shape: np.zeros(shape, np.int64))
        on, some = np.ones(rows, bool), np.full(rows, 0.1)
        return cls(on, f(rows, vocab), some + 1.0, i(rows) + 4, i(rows, 4), i(rows), i(rows), i(rows, vocab), some,
                   some, f(rows, vocab), i(rows) + 2, np.zeros((rows, steps), np.float32), i(rows, steps, 2),
                   np.zeros((rows, steps, 2), np.float32), i(rows), i(1, vocab), np.ones((1, vocab), bool),
                   np.ones(1, bool), np.zeros(1, bool), np.zeros(rows, bool))  # fmt: skip


@dataclasses.dataclass
class Chunk:
    """What one call of decode_chunk (the CPU's two paths, and cuda_graphs') does for each row r of
    a batch: it first
    reads the row's n_forced[r] prefix ids forced[r, :n_forced[r]] (one per step, nothing sampled),
    then samples its p-th character with uniforms[r, p] into out[r, p], at most remaining[r] of
    them, and feeds each one unless the row is done; up to out.shape[1] steps. A row ends at a
    character that completes one of its stop strings, and the call after that step (the caller
    finds the stop in the text and trims it)."""

    forced: np.ndarray  # (B, F) int64
    n_forced: np.ndarray  # (B,) int64
    temperature: np.ndarray  # (B,) float64; 0 = greedy
    top_k: np.ndarray  # (B,) int64; 0 = off
    top_p: np.ndarray  # (B,) float64; 1 = off
    min_p: np.ndarray  # (B,) float64; 0 = off
    uniforms: np.ndarray  # (B, K) float64
    remaining: np.ndarray  # (B,) int64
    out: np.ndarray  # (B, K) int64: the sampled ids
    unk: int  # the id never sampled
    # once another thread sets interrupt[0], the call ends before its next step, if it has taken
    # interrupt_after steps (else when it has); at least one, so that every call makes progress
    interrupt: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int64))
    interrupt_after: int = 1
    # each row's stop strings as ids (B, S, L), their lengths (B, S) (0: none; a row's from the first
    # slot) and its last L - 1 ids before this call (B, L - 1), -1 where there were fewer: stop_ids()
    stops: np.ndarray | None = None
    stop_len: np.ndarray | None = None
    tail: np.ndarray | None = None
    extras: Extras | None = None  # rows with a logit bias, penalties, a regex or log-probabilities

    def __post_init__(self) -> None:
        self.interrupt_after = max(1, self.interrupt_after)
        if self.stops is None or self.stop_len is None or self.tail is None:  # no stop strings
            rows = len(self.n_forced)
            self.stops, self.stop_len = np.zeros((rows, 1, 1), np.int64), np.zeros((rows, 1), np.int64)
            self.tail = np.full((rows, 1), -1, np.int64)

    def args(self) -> tuple:
        """The fields both CPU paths' samplers take (not `interrupt`, which each path reads itself)."""
        return (self.forced, self.n_forced, self.temperature, self.top_k, self.top_p, self.min_p, self.uniforms,
                self.remaining, self.out, self.unk, None if self.extras is None else self.extras.args())  # fmt: skip

    def stop_args(self) -> tuple:
        """The stop strings' fields, as the CPU paths' stop check (_a_row_stopped) takes them."""
        return self.stops, self.stop_len, self.tail

    @property
    def has_stops(self) -> bool:
        return self.stop_len is not None and bool(self.stop_len[:, 0].max() > 0)

    @classmethod
    def trial(cls, rows: int, vocab: int | None = None) -> Chunk:
        """Two steps of each of `rows` rows (one prefix id, then one greedy character): compiles the
        code; with `vocab` (at least 3 ids), every row with every extra (Extras.trial)."""
        ones = np.ones(rows, np.int64)
        return cls(np.ones((rows, 1), np.int64), ones, np.zeros(rows), 2 * ones, np.ones(rows), np.zeros(rows),
                   np.zeros((rows, 3)), 2 * ones, np.zeros((rows, 3), np.int64), 0,
                   extras=None if vocab is None else Extras.trial(rows, vocab, 3))  # fmt: skip


def decode_chunk(fw: FastWeights, state: np.ndarray, logits: np.ndarray, chunk: Chunk) -> int:
    """The steps of `chunk` in compiled code. state (R, B, H) and logits (B, V) are updated in
    place (a finished row's are left stale). Returns the steps taken: fewer than out.shape[1]
    where every row ended, or chunk.interrupt ended the call."""
    return int(
        _decode_chunk(
            *fw.args(), state, logits, *chunk.args(), *chunk.stop_args(), chunk.interrupt, chunk.interrupt_after
        )
    )


def warm(model: CharRNN, dtype: torch.dtype) -> None:
    """Compiles (or loads from numba's cache) the code for this dtype and builds the model's
    weights for it, so that the first request does not wait for either. No-op where unsupported."""
    if not supports(model, dtype):
        return
    fw = fast_weights(model, dtype)
    cfg = model.config
    state = np.zeros((cfg.state_rows, 1, cfg.hidden_size), np.float32)
    logits = np.zeros((1, cfg.vocab_size), np.float32)
    decode_chunk(fw, state, logits, Chunk.trial(1))
    decode_chunk(fw, state, logits, Chunk.trial(1, cfg.vocab_size))  # the code for rows with extras
