"""The character-level recurrent language model: one-hot or embedded input, RNN/LSTM/GRU, linear head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ENCODINGS = ("one_hot", "embedding")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # characters the model knows, UNK included
    cell: str = "rnn"  # rnn | lstm | gru; the tutorial uses a plain tanh RNN
    hidden_size: int = 12  # the tutorial's hidden_dim
    num_layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # between recurrent layers and before the head; only while training
    encoding: str = "one_hot"  # one_hot (as in the tutorial) | embedding (learned vectors)
    embedding_dim: int = 0  # width of the learned embedding; 0 means hidden_size

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, not {self.cell!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {list(ENCODINGS)}, not {self.encoding!r}")
        if self.vocab_size < 2 or self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("vocab_size >= 2, hidden_size >= 1 and num_layers >= 1 are required")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    @property
    def input_size(self) -> int:
        if self.encoding == "one_hot":
            return self.vocab_size
        return self.embedding_dim or self.hidden_size

    @property
    def state_rows(self) -> int:
        """Rows of the recurrent state: an LSTM carries a cell state beside its hidden state."""
        return self.num_layers * (2 if self.cell == "lstm" else 1)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def flops_per_char(self) -> int:
        """Multiply-adds x2 of one decoding step for one sequence (the matrix products only)."""
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[self.cell]
        total = 0
        for layer in range(self.num_layers):
            inp = self.hidden_size if layer else (0 if self.encoding == "one_hot" else self.input_size)
            # a one-hot input selects one column of W_ih: no multiply at all
            total += 2 * gates * self.hidden_size * (inp + self.hidden_size)
        return total + 2 * self.hidden_size * self.vocab_size


class CharRNN(nn.Module):
    """ids (B, T) + state -> logits (B, T, V) + new state. The state is one tensor for every cell
    type, (state_rows, B, H), so batches of sequences can be split and joined along dim 1."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.encoding == "embedding":
            self.embed = nn.Embedding(config.vocab_size, config.input_size)
        else:
            # one-hot rows looked up from a fixed identity: same values as F.one_hot, no per-step build
            self.register_buffer("one_hot", torch.eye(config.vocab_size), persistent=False)
        rnn_cls = CELLS[config.cell]
        self.rnn = rnn_cls(
            config.input_size,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.hidden_size, config.vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        device = device if device is not None else self.fc.weight.device
        return torch.zeros(self.config.state_rows, batch_size, self.config.hidden_size, device=device)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        if self.config.encoding == "embedding":
            return self.embed(ids)  # (B, T, E)
        return self.one_hot[ids]  # (B, T, V)

    def forward(
        self, ids: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`last_only` scores just the final position: all that decoding needs after a prefix."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        x = self.encode(ids)
        if self.config.cell == "lstm":
            h, c = state.chunk(2, dim=0)
            out, (h, c) = self.rnn(x, (h.contiguous(), c.contiguous()))  # (B, T, H)
            new_state = torch.cat((h, c), dim=0)
        else:
            out, new_state = self.rnn(x, state.contiguous())  # (B, T, H)
        if last_only:
            out = out[:, -1:]  # (B, 1, H)
        logits = self.fc(self.drop(out))  # (B, T, V)
        return logits, new_state

    @torch.no_grad()
    def step(
        self, ids: torch.Tensor, state: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step for a batch: ids (B,) + state (R, B, H) -> logits (B, V) + new state.

        Same maths as forward() with T=1, rearranged for speed (see _decode_weights): the first
        layer's input projection is a table lookup, deeper layers use one fused matrix product
        per layer, and nn.RNN's sequence machinery (and oneDNN's slow small-batch path) is skipped.

        `dtype` is what the recurrent matrix products run in. bfloat16 is several times faster
        on CPUs with AVX512-BF16 or AMX (and on GPUs): weights, the products' inputs and their
        results are rounded to bfloat16 (sums are accumulated in float32); biases, gates, the
        state and the logits stay float32. Each row's result depends only on that row, batched or not.
        """
        cfg = self.config
        w = self._decode_weights(dtype)
        low = dtype != torch.float32

        def product(bias: torch.Tensor, x: torch.Tensor, name: str, layer: int) -> torch.Tensor:
            """bias + x @ weight in float32, the product computed in `dtype`."""
            if not low:
                return torch.addmm(bias, x, w[name][layer])
            if x.shape[0] == 1:  # one row: the same bf16 values multiplied in float32 are faster, then
                # rounded to bf16 as the bf16 product is, so that a row's result does not depend on its batch
                return bias.add(torch.mm(x.to(dtype).float(), w[name + "_rounded"][layer]).to(dtype))
            return bias.add(torch.mm(x.to(dtype), w[name][layer]))  # a bf16 result; the add promotes to float32

        hidden = cfg.hidden_size
        layers = cfg.num_layers
        new_h, new_c = [], []
        x_proj = w["input_table"][ids]  # (B, G*H): layer 0's input projection, bias included
        x = x_proj  # each later layer's input is the previous layer's output
        for layer in range(layers):
            h = state[layer]  # (B, H)
            if layer > 0:  # input and recurrent products in one matrix multiply
                gates = product(w["bias"][layer], torch.cat((x, h), dim=1), "w_cat", layer)
            elif cfg.cell == "gru":
                gates = x_proj
            else:
                gates = product(x_proj, h, "w_hh", 0)  # (B, G*H)
            if cfg.cell == "lstm":
                # tanh(x) = 2 sigmoid(2x) - 1: torch's CPU tanh costs several times its sigmoid, and
                # the cell-input columns come pre-doubled (_decode_weights), so one sigmoid covers all
                # four gates: act = [i, f, sigmoid(2 g~), o]
                act = gates.sigmoid()
                i, f, o = act[:, :hidden], act[:, hidden : 2 * hidden], act[:, 3 * hidden :]
                # c = f c' + i g = (f c' - i) + 2 i sigmoid(2 g~)
                c = torch.addcmul(
                    torch.addcmul(i.neg(), f, state[layers + layer]), i, act[:, 2 * hidden : 3 * hidden], value=2.0
                )
                h = torch.addcmul(o.neg(), o, torch.sigmoid(c + c), value=2.0)  # o tanh(c)
                new_c.append(c)
            elif cfg.cell == "gru":
                # the reset gate scales only the recurrent part of the candidate: keep them apart
                x_part = gates if layer == 0 else product(w["b_ih"][layer], x, "w_ih", layer)
                h_part = product(w["b_hh"][layer], h, "w_hh", layer)
                rz = (x_part[:, : 2 * hidden] + h_part[:, : 2 * hidden]).sigmoid()
                r, z = rz[:, :hidden], rz[:, hidden:]
                n = torch.addcmul(x_part[:, 2 * hidden :], r, h_part[:, 2 * hidden :]).tanh()
                h = n + z * (h - n)
            else:
                h = gates.tanh()
            new_h.append(h)
            x = h
        logits = torch.addmm(self.fc.bias, x, w["fc"])  # (B, V): small, always float32
        return logits, torch.stack(new_h + new_c)  # (R, B, H)

    def _decode_weights(self, dtype: torch.dtype = torch.float32) -> dict:
        """Weights rearranged for step(), rebuilt whenever any parameter has changed.

        Layer 0's input is one of V characters, so its input projection (embedding or one-hot
        times W_ih, plus the bias) is precomputed as a (V, G*H) table: a lookup replaces that
        matrix product. The recurrent matrices are stored in `dtype`; tables, biases and the
        output layer stay float32.
        """
        params = self.__dict__.get("_decode_params")
        if params is None:  # the Parameter objects live as long as the model; their values may change
            params = self.__dict__["_decode_params"] = list(self.parameters())
        key = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        cache = getattr(self, "_decode_cache", None)
        if cache is None or cache[0] != key:
            cache = self._decode_cache = (key, {})
        if dtype in cache[1]:
            return cache[1][dtype]
        cfg, rnn = self.config, self.rnn
        scale = None  # per gate row
        if cfg.cell == "lstm":  # double the cell-input (g) rows: step() takes its tanh as 2 sigmoid(2x) - 1
            scale = torch.ones(4 * cfg.hidden_size, device=self.fc.weight.device)
            scale[2 * cfg.hidden_size : 3 * cfg.hidden_size] = 2.0  # a power of two: exact in any float format

        def get(name: str, layer: int) -> torch.Tensor:
            t = getattr(rnn, f"{name}_l{layer}").detach()
            if scale is None:
                return t
            return t * (scale[:, None] if t.dim() == 2 else scale)

        inputs = self.embed.weight.detach() if cfg.encoding == "embedding" else self.one_hot  # (V, I)
        table = inputs @ get("weight_ih", 0).t() + get("bias_ih", 0)  # (V, G*H)
        if cfg.cell != "gru":
            table = table + get("bias_hh", 0)
        matrix = lambda m: m.t().contiguous().to(dtype)  # noqa: E731
        w = {
            "input_table": table.contiguous(),
            "w_hh": [matrix(get("weight_hh", k)) for k in range(cfg.num_layers)],
            "w_ih": [matrix(get("weight_ih", k)) for k in range(cfg.num_layers)],
            "b_ih": [get("bias_ih", k) for k in range(cfg.num_layers)],
            "b_hh": [get("bias_hh", k) for k in range(cfg.num_layers)],
            "w_cat": [None]
            + [matrix(torch.cat((get("weight_ih", k), get("weight_hh", k)), dim=1)) for k in range(1, cfg.num_layers)],
            "bias": [None] + [get("bias_ih", k) + get("bias_hh", k) for k in range(1, cfg.num_layers)],
            "fc": self.fc.weight.detach().t(),
        }
        if dtype != torch.float32:  # the rounded values again in float32, for one-row steps
            for name in ("w_hh", "w_ih", "w_cat"):
                w[name + "_rounded"] = [m.float() if m is not None else None for m in w[name]]
        cache[1][dtype] = w
        return w

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
