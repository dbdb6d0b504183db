"""Decoding steps on a GPU as CUDA graphs: one launch per step instead of a dozen kernels.

A step of a small recurrent model is a string of short kernels (a table lookup, one product per
layer, the cell's pointwise work, the output layer), each launched from Python; on a GPU the
launches, not the arithmetic, set the pace. torch.cuda.CUDAGraph records the kernels of one
decode.step once, with its inputs and outputs in fixed buffers, and replays them with one call.

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
from dataclasses import dataclass, field
from typing import Any

import torch

from app.lm import decode
from app.lm.model import CharRNN

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager runs on a side stream before recording (torch's advice: lazy inits happen there)
BLOCK_ROWS = 64  # rows of every product in a step (blocked_step)


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
    pool: Any = None  # one memory pool shared by a model's graphs
    failed: bool = False  # recording failed once: eager from then on


def supported(model: CharRNN) -> bool:
    return model.fc.weight.device.type == "cuda"


def step(
    model: CharRNN, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """decode.step on a CUDA model through a recorded graph of blocked_step: the same arguments
    and results (fresh tensors the caller may keep), a row's result the same in any batch."""
    decode.decode_weights(model, dtype)  # notices a parameter change (which drops the graphs)
    graphs = decode.extra(model, dtype, "cuda_graphs")
    if graphs is None:
        graphs = decode.extra(model, dtype, "cuda_graphs", _Graphs())
    rows = ids.shape[0]
    size = bucket(rows)
    if graphs.failed:
        return _eager(model, ids, state, size, dtype)
    g = graphs.by_size.get(size)
    if g is None:
        try:
            with torch.cuda.device(state.device):  # record on the model's own GPU (cuda:N)
                g = graphs.by_size[size] = _record(model, state, size, dtype, graphs)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:  # torch reports CUDA failures as RuntimeError
            graphs.failed = True
            log.warning("CUDA graphs unavailable (%s); decoding steps run kernel by kernel", e)
            return _eager(model, ids, state, size, dtype)
    g.ids[:rows].copy_(ids)
    g.state[:, :rows].copy_(state)
    g.graph.replay()
    return g.logits[:rows].clone(), g.new_state[:, :rows].clone()


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
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(WARMUP_STEPS):
            blocked_step(model, ids, static_state, dtype)
    torch.cuda.current_stream(device).wait_stream(side)
    if graphs.pool is None:
        graphs.pool = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=graphs.pool), torch.inference_mode():
        logits, new_state = blocked_step(model, ids, static_state, dtype)
    return _Graph(graph, ids, static_state, logits, new_state)
