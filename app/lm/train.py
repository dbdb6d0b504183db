"""The training loop: batches of (input, target) ids -> a trained CharRNN. Knows nothing of HTTP."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from app.lm import data
from app.lm.model import CharRNN, ModelConfig
from app.lm.vocab import Vocab


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # passes over the data; the tutorial's n_epochs
    learning_rate: float = 0.01  # Adam's step size; the tutorial's lr
    batch_size: int = 64  # sequences per step; the tutorial's three sentences fit in one
    seq_len: int = 100  # window length when training on a corpus
    seed: int = 0  # fixes initial weights, shuffling and dropout
    grad_clip: float = 5.0  # max global gradient norm; 0 turns clipping off
    max_steps: int = 0  # stop after this many optimizer steps; 0 = no limit
    max_seconds: float = 0.0  # stop after this much wall-clock time; 0 = no limit

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float


@dataclass
class TrainResult:
    final_loss: float
    steps: int
    epochs: int
    seconds: float
    history: list[float] = field(default_factory=list)  # loss at the end of each epoch


class TrainingCancelled(Exception):
    """should_stop() turned true: the job was asked to stop."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


def train(
    model: CharRNN,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Trains `model` in place on (N, T) input/target id tensors with Adam and cross-entropy."""
    device = model.fc.weight.device
    inputs, targets = inputs.to(device), targets.to(device)
    n = inputs.shape[0]
    batches_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * batches_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    criterion = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(config.seed)
    started = time.monotonic()
    step, loss_value, history, epoch = 0, float("nan"), [], 0
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=shuffler) if batches_per_epoch > 1 else torch.arange(n)
        for b in range(batches_per_epoch):
            if should_stop is not None and should_stop():
                raise TrainingCancelled()
            idx = order[b * config.batch_size : (b + 1) * config.batch_size].to(device)
            optimizer.zero_grad(set_to_none=True)
            logits, _ = model(inputs[idx])  # (B, T, V)
            loss = criterion(logits.reshape(-1, logits.shape[-1]), targets[idx].reshape(-1))
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value} at step {step + 1}")
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            if on_progress is not None:
                on_progress(Progress(epoch, config.epochs, step, total_steps, loss_value))
            out_of_time = config.max_seconds and time.monotonic() - started >= config.max_seconds
            if step >= total_steps or out_of_time:
                break
        history.append(loss_value)
        if step >= total_steps or (config.max_seconds and time.monotonic() - started >= config.max_seconds):
            break
    model.eval()
    return TrainResult(loss_value, step, epoch, time.monotonic() - started, history)


def build_model(config: ModelConfig, seed: int, device: torch.device | str = "cpu") -> CharRNN:
    """Initial weights depend only on `seed`, whatever else uses the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CharRNN(config)
    return model.to(device)


def train_on_text(
    *,
    sentences: list[str] | None = None,
    corpus: str | None = None,
    cell: str = "rnn",
    hidden_size: int = 12,
    num_layers: int = 1,
    dropout: float = 0.0,
    encoding: str = "one_hot",
    embedding_dim: int = 0,
    config: TrainConfig = TrainConfig(),
    device: torch.device | str = "cpu",
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[CharRNN, Vocab, ModelConfig, TrainResult]:
    """From raw text to a trained model: builds the vocabulary, the tensors and the model, then trains."""
    if (sentences is None) == (corpus is None):
        raise ValueError("give exactly one of sentences or corpus")
    vocab = Vocab.from_text(sentences if sentences is not None else corpus)
    if sentences is not None:
        vocab = Vocab.from_text(data.pad_sentences(sentences))
        inputs, targets = data.sentence_pairs(vocab, sentences)
    else:
        inputs, targets = data.corpus_pairs(vocab, corpus, config.seq_len)
    model_config = ModelConfig(
        vocab_size=vocab.size,
        cell=cell,
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=dropout,
        encoding=encoding,
        embedding_dim=embedding_dim,
    )
    model = build_model(model_config, config.seed, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout masks
        result = train(model, inputs, targets, config, on_progress, should_stop)
    return model, vocab, model_config, result
