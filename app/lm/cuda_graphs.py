"""Decoding on a GPU as CUDA graphs: one launch for many steps instead of dozens of kernels each.

A step of a small recurrent model is a string of short kernels (a table lookup, one product per
layer, the cell's pointwise work, the output layer), each launched from Python; on a GPU the
launches, not the arithmetic, set the pace. torch.cuda.CUDAGraph records the kernels once, with
their inputs and outputs in fixed buffers, and replays them with one call:

- decode_chunk: up to MAX_STEPS steps with the sampling inside (decode_steps), for rows that
  decode plainly (greedy, temperature, top-k, top-p, min-p): the GPU's counterpart of the CPU's
  compiled paths, taking the same fastpath.Chunk. Each row's random numbers are drawn on the host
  from its own stream, as for the CPU, and the sampler is the CPU's (sampling._draw) written in
  torch, in float64, so a seed chooses as it does on the CPU but for rounding. One copy to the
  host per call; a call (a few milliseconds) is never interrupted.
- step: one step (decode.step), for batches with rows that need the host between steps (a regex,
  penalties, logit bias, log-probabilities).

A graph is recorded per batch size bucket (64, 128, 256, ... rows up to the largest batch seen,
as vLLM does): a batch of B rows is copied into the first B rows of its bucket's buffers, the rest
of the bucket computing rows nobody reads. Inside a graph the rows are computed in blocks of
BLOCK_ROWS (blocked_step), so that a row's result does not depend on its batch: cuBLAS chooses a
product's kernel by its shape, and kernels sum in orders of their own, so a row multiplied among
3 rows can round differently from the same row among 64; every block has the same shape, so
every row is computed by the same kernels. A block of 64 rows costs a GPU what one row does (a
step's products are a few MB: launching them, not reading them, takes the time).
Graphs belong to the weights they were recorded with (kept beside decode_weights, dropped with
them when a parameter changes). Where recording fails (an old driver, memory), the step runs
eagerly, in the same blocks, and a warning says why once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.lm import decode
from app.lm.model import CharRNN

if TYPE_CHECKING:
    from app.lm.fastpath import Chunk

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager runs on a side stream before recording (torch's advice: lazy inits happen there)
BLOCK_ROWS = 64  # rows of every product in a step (blocked_step)
MAX_STEPS = 32  # the longest decode_chunk graph; calls run 1, 2, 4, ... or MAX_STEPS steps (chunk_steps)


def bucket(rows: int) -> int:
    """The batch size a graph is recorded for: BLOCK_ROWS times the next power of two of the blocks."""
    blocks = -(-rows // BLOCK_ROWS)
    return BLOCK_ROWS * (1 << max(0, blocks - 1).bit_length())


def blocked_step(
    model: CharRNN, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """decode.step for a batch whose size is a multiple of BLOCK_ROWS, one block of rows at a
    time: every product has BLOCK_ROWS rows, whatever the batch, so a row's result is the same in
    any batch."""
    rows = ids.shape[0]
    assert rows % BLOCK_ROWS == 0, rows
    if rows == BLOCK_ROWS:
        return decode.step(model, ids, state, dtype)
    parts = [
        decode.step(model, ids[k : k + BLOCK_ROWS], state[:, k : k + BLOCK_ROWS], dtype)
        for k in range(0, rows, BLOCK_ROWS)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # (N,) the inputs' buffers
    state: torch.Tensor  # (R, N, H)
    logits: torch.Tensor  # (N, V) the outputs' buffers, written by every replay
    new_state: torch.Tensor  # (R, N, H)


@dataclass
class _Graphs:
    by_size: dict[int, _Graph] = field(default_factory=dict)
    chunks: dict[tuple[int, int, str, int], _ChunkGraph] = field(default_factory=dict)  # (rows, steps, sampler, unk)
    pool: Any = None  # one memory pool shared by a model's graphs
    failed: bool = False  # recording failed once: eager from then on
    # decode workers share a model (CHARRNN_DECODE_WORKERS > 1): one at a time records a graph or
    # fills its buffers, replays it and reads its results (the GPU runs one stream anyway)
    lock: threading.Lock = field(default_factory=threading.Lock)


def supported(model: CharRNN) -> bool:
    return model.fc.weight.device.type == "cuda"


def step(
    model: CharRNN, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """decode.step on a CUDA model through a recorded graph of blocked_step: the same arguments
    and results (fresh tensors the caller may keep), a row's result the same in any batch."""
    graphs = _graphs(model, dtype)
    rows = ids.shape[0]
    size = bucket(rows)
    if graphs.failed or not state.is_cuda:  # off a GPU (tests): the same blocks, eagerly
        return _eager(model, ids, state, size, dtype)
    with graphs.lock:
        g = graphs.by_size.get(size)
        if g is None:
            try:
                with torch.cuda.device(state.device):  # record on the model's own GPU (cuda:N)
                    g = graphs.by_size[size] = _record(model, state, size, dtype, graphs)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:  # torch reports CUDA failures as RuntimeError
                _failed(graphs, e)
                return _eager(model, ids, state, size, dtype)
        g.ids[:rows].copy_(ids)
        g.state[:, :rows].copy_(state)
        g.graph.replay()
        return g.logits[:rows].clone(), g.new_state[:, :rows].clone()


def _graphs(model: CharRNN, dtype: torch.dtype) -> _Graphs:
    decode.decode_weights(model, dtype)  # notices a parameter change (which drops the graphs)
    graphs = decode.extra(model, dtype, "cuda_graphs")
    if graphs is None:
        graphs = decode.extra(model, dtype, "cuda_graphs", _Graphs())
    return graphs


def _failed(graphs: _Graphs, error: BaseException) -> None:
    graphs.failed = True
    log.warning("CUDA graphs unavailable (%s); decoding steps run kernel by kernel", error)


def record(device: torch.device, run: Callable[[], Any], pool: Any = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """run() recorded as a CUDA graph on `device` (in memory pool `pool`, where given), after
    WARMUP_STEPS eager runs on a side stream (torch's advice: lazy inits happen there). Returns the
    graph and what run() returned while recording: the buffers every replay writes."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(WARMUP_STEPS):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
        outputs = run()
    return graph, outputs


def _pool(graphs: _Graphs) -> Any:
    """The memory pool a model's graphs share."""
    if graphs.pool is None:
        graphs.pool = torch.cuda.graph_pool_handle()
    return graphs.pool


def _eager(
    model: CharRNN, ids: torch.Tensor, state: torch.Tensor, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """blocked_step without a graph: the batch padded to `size` rows, the padding dropped after."""
    rows = ids.shape[0]
    padded_ids = torch.zeros(size, dtype=ids.dtype, device=ids.device)
    padded_ids[:rows] = ids
    padded = state.new_zeros(state.shape[0], size, state.shape[2])
    padded[:, :rows] = state
    logits, new_state = blocked_step(model, padded_ids, padded, dtype)
    return logits[:rows], new_state[:, :rows].contiguous()


def _record(model: CharRNN, state: torch.Tensor, size: int, dtype: torch.dtype, graphs: _Graphs) -> _Graph:
    device = state.device
    ids = torch.zeros(size, dtype=torch.long, device=device)
    static_state = torch.zeros(state.shape[0], size, state.shape[2], device=device)
    graph, (logits, new_state) = record(device, lambda: blocked_step(model, ids, static_state, dtype), _pool(graphs))
    return _Graph(graph, ids, static_state, logits, new_state)


# ---- several steps per call, sampling inside ---------------------------------------------------


def chunk_steps(steps: int) -> int:
    """The steps of the longest decode_chunk graph within `steps`: a power of two, at most MAX_STEPS."""
    return min(MAX_STEPS, 1 << (max(1, steps).bit_length() - 1))


def sampler(temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, min_p: np.ndarray) -> str:
    """The least of sample()'s forms that serves every row: greedy, temperature, or filtered."""
    drawing = temperature > 0
    if not drawing.any():
        return "greedy"
    if ((top_k > 0) | (top_p < 1.0) | (min_p > 0.0))[drawing].any():
        return "filtered"
    return "temperature"


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    u: torch.Tensor,
    unk: int,
    how: str = "filtered",
) -> torch.Tensor:
    """The id each row of logits (B, V) chooses, as fastpath._sample_row (sampling._draw, or the
    argmax where the temperature is 0) chooses it, in float64 and without leaving the device:
    temperature, then top-k, top-p and min-p, then the first id whose cumulative mass passes u
    (B,) times the total. Never UNK. `how` (sampler()) leaves out what no row needs."""
    x = logits.to(torch.float64, copy=True)
    x[:, unk] = -torch.inf
    greedy = x.argmax(1)  # the first of equal maxima, as the CPU's
    if how == "greedy":
        return greedy
    z = x / torch.where(temperature > 0, temperature, 1.0)[:, None]
    p = torch.exp(z - z.amax(1, keepdim=True))  # unnormalised; UNK's is 0
    vocab = p.shape[1]
    if how == "filtered":
        ranked = p.sort(1, descending=True).values
        run = ranked.cumsum(1)
        k = torch.where(top_k > 0, top_k, vocab)
        kept = torch.minimum(((run - ranked) / run[:, -1:] < top_p[:, None]).sum(1), k).clamp(min=1)
        cutoff = torch.maximum(ranked.gather(1, (kept - 1)[:, None]), min_p[:, None] * ranked[:, :1])
        filtered = (k < vocab) | (top_p < 1.0) | (min_p > 0.0)
        p = torch.where(filtered[:, None] & (p < cutoff), 0.0, p)
    cdf = p.cumsum(1)
    drawn = (cdf <= u[:, None] * cdf[:, -1:]).sum(1)  # the first id past the target (cdf never falls)
    drawn = torch.where(drawn < vocab, drawn, 0)
    return torch.where(temperature > 0, drawn, greedy)


def decode_steps(
    model: CharRNN,
    dtype: torch.dtype,
    packed: torch.Tensor,
    logits: torch.Tensor,
    state: torch.Tensor,
    unk: int,
    how: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K decoding steps of B rows (a multiple of BLOCK_ROWS), block by block, what a decode_chunk
    graph records. `packed` (B, 2K + 5) float64 holds each row's inputs (_pack): at step t a row
    reads forced[t] while t < n_forced, else the id it draws from its logits with uniforms[t].
    Returns the id drawn at every step (B, K) (unread where the row read its prefix) and the
    logits (B, V) and state (R, B, H) after the last step."""
    steps = (packed.shape[1] - 5) // 2
    forced = packed[:, :steps].long()
    uniforms = packed[:, steps : 2 * steps]
    n_forced = packed[:, 2 * steps].long()
    temperature, top_k = packed[:, 2 * steps + 1], packed[:, 2 * steps + 2].long()
    top_p, min_p = packed[:, 2 * steps + 3], packed[:, 2 * steps + 4]
    drawn_blocks, logits_blocks, state_blocks = [], [], []
    for k in range(0, packed.shape[0], BLOCK_ROWS):
        b = slice(k, k + BLOCK_ROWS)
        x, h, drawn_at = logits[b], state[:, b], []
        for t in range(steps):
            drawn = sample(x, temperature[b], top_k[b], top_p[b], min_p[b], uniforms[b, t], unk, how)
            drawn_at.append(drawn)
            x, h = decode.step(model, torch.where(n_forced[b] > t, forced[b, t], drawn), h, dtype)
        drawn_blocks.append(torch.stack(drawn_at, 1))
        logits_blocks.append(x)
        state_blocks.append(h)
    return torch.cat(drawn_blocks), torch.cat(logits_blocks), torch.cat(state_blocks, dim=1)


@dataclass
class _ChunkGraph:
    """A decode_chunk call's buffers (inputs, and outputs once recorded) and its graph (None: eager)."""

    packed: torch.Tensor  # (N, 2K + 5) float64
    logits: torch.Tensor  # (N, V)
    state: torch.Tensor  # (R, N, H)
    graph: torch.cuda.CUDAGraph | None = None
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # written by every replay

    def run(self, model: CharRNN, dtype: torch.dtype, unk: int, how: str) -> tuple[torch.Tensor, ...]:
        if self.graph is not None and self.outputs is not None:
            self.graph.replay()
            return self.outputs
        return decode_steps(model, dtype, self.packed, self.logits, self.state, unk, how)


def decode_chunk(model: CharRNN, dtype: torch.dtype, state: torch.Tensor, logits: torch.Tensor, chunk: Chunk) -> int:
    """The steps of `chunk` (chunk.out.shape[1] of them, a chunk_steps() length) in one replay of
    a recorded graph: state (R, B, H) and logits (B, V) updated in place. Returns the steps taken.
    A call is short (MAX_STEPS steps of a few tens of microseconds): chunk.interrupt is not read.
    Off a GPU (tests), or where recording failed, the same steps run eagerly."""
    rows, steps = chunk.out.shape
    how = sampler(chunk.temperature, chunk.top_k, chunk.top_p, chunk.min_p)
    graphs = _graphs(model, dtype)
    size = bucket(rows)
    key = (size, steps, how, chunk.unk)
    with graphs.lock:
        g = graphs.chunks.get(key)
        if g is None:
            g = graphs.chunks[key] = _ChunkGraph(
                torch.zeros(size, 2 * steps + 5, dtype=torch.float64, device=state.device),
                torch.zeros(size, logits.shape[1], device=state.device),
                torch.zeros(state.shape[0], size, state.shape[2], device=state.device),
            )
            if state.is_cuda and not graphs.failed:
                try:
                    with torch.cuda.device(state.device):
                        _record_chunk(model, dtype, g, chunk.unk, how, graphs)
                except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                    _failed(graphs, e)
        g.packed[:rows].copy_(torch.from_numpy(_pack(chunk, steps)))
        g.logits[:rows].copy_(logits)
        g.state[:, :rows].copy_(state)
        drawn, new_logits, new_state = g.run(model, dtype, chunk.unk, how)
        drawn_rows = drawn[:rows].cpu().numpy()  # waits for the steps: the one copy to the host
        logits.copy_(new_logits[:rows])
        state.copy_(new_state[:, :rows])
    position = np.arange(steps)[None, :] - chunk.n_forced[:, None]  # (B, K): what each step sampled
    sampled = (position >= 0) & (position < chunk.remaining[:, None])
    r, t = np.nonzero(sampled)
    chunk.out[r, position[r, t]] = drawn_rows[r, t]
    return steps


def _pack(chunk: Chunk, steps: int) -> np.ndarray:
    """decode_steps's `packed` for the rows of `chunk`: one copy to the device for all of it.
    A row's p-th sampled character is drawn at step n_forced + p, with uniforms[p]."""
    n_forced = chunk.n_forced
    rows = len(n_forced)
    packed = np.zeros((rows, 2 * steps + 5))
    width = min(steps, chunk.forced.shape[1])
    packed[:, :width] = chunk.forced[:, :width]
    position = np.arange(steps)[None, :] - n_forced[:, None]
    drawn = (position >= 0) & (position < chunk.uniforms.shape[1])
    r, t = np.nonzero(drawn)
    packed[r, steps + t] = chunk.uniforms[r, position[r, t]]
    packed[:, 2 * steps :] = np.stack((n_forced, chunk.temperature, chunk.top_k, chunk.top_p, chunk.min_p), axis=1)
    return packed


def _record_chunk(model: CharRNN, dtype: torch.dtype, g: _ChunkGraph, unk: int, how: str, graphs: _Graphs) -> None:
    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return decode_steps(model, dtype, g.packed, g.logits, g.state, unk, how)

    g.graph, g.outputs = record(g.state.device, run, _pool(graphs))
