"""The character-level recurrent language model: one-hot or embedded input, RNN/LSTM/GRU, linear head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from app.lm.settings import setting

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ENCODINGS = ("one_hot", "embedding")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = setting(help="characters the model knows, UNK included", ge=2)
    cell: str = setting("rnn", "recurrent cell; the tutorial uses a plain tanh RNN", choices=tuple(CELLS))
    hidden_size: int = setting(12, "size of each layer's hidden state (the tutorial's hidden_dim)", ge=1)
    num_layers: int = setting(1, "stacked recurrent layers", ge=1)
    dropout: float = setting(
        0.0, "dropout probability between recurrent layers and before the head; only while training", ge=0.0, lt=1.0
    )
    encoding: str = setting(
        "one_hot", "input encoding: one_hot (as in the tutorial) or embedding (learned vectors)", choices=ENCODINGS
    )
    embedding_dim: int = setting(
        0, "width of the learned embedding (encoding=embedding); 0 = hidden_size", ge=0, le=4096
    )

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


# what a caller chooses of a model; vocab_size comes from the text
ARCHITECTURE = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")


class CharRNN(nn.Module):
    """ids (B, T) + state -> logits (B, T, V) + new state. The state is one tensor for every cell
    type, (state_rows, B, H), so batches of sequences can be split and joined along dim 1.
    Decoding one character at a time takes the faster path in app.lm.decode."""

    one_hot: torch.Tensor  # buffer registered in __init__ for one-hot encoding

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

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
