"""Text -> training batches: the tutorial's padded sentences, or a corpus read as parallel streams."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from app.lm.vocab import Vocab


def pad_sentences(sentences: list[str]) -> list[str]:
    """Pads every sentence with spaces to the longest one, as the tutorial does."""
    width = max(len(s) for s in sentences)
    return [s.ljust(width) for s in sentences]


def sentence_pairs(vocab: Vocab, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each padded sentence is one sequence: input drops the last char, target drops the first."""
    padded = pad_sentences(sentences)
    if len(padded[0]) < 2:
        raise ValueError("sentences need at least 2 characters to make a training pair")
    ids = torch.tensor([vocab.encode(s) for s in padded], dtype=torch.long)  # (N, W)
    return ids[:, :-1], ids[:, 1:]


def split_validation(ids: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `val_fraction` of the text is held out (as char-rnn and nanoGPT do)."""
    n_val = int(len(ids) * val_fraction)
    if val_fraction > 0 and n_val < 2:  # a short text: two characters, if training keeps its minimum
        n_val = 2 if len(ids) - 2 >= MIN_CORPUS_CHARS else 0
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


MIN_CORPUS_CHARS = 3  # one stream of two (input, target) pairs


class SentenceBatches:
    """Independent sequences (the tutorial's sentences): shuffled minibatches, state reset each batch."""

    stateful = False

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int):
        self.inputs, self.targets = inputs, targets
        self.batch_size = min(batch_size, len(inputs))
        self.steps_per_epoch = math.ceil(len(inputs) / self.batch_size)
        self.chars_per_step = self.batch_size * inputs.shape[1]
        self._gen = torch.Generator().manual_seed(seed)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.inputs)
        order = torch.randperm(n, generator=self._gen) if self.steps_per_epoch > 1 else torch.arange(n)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.inputs[idx], self.targets[idx]


class StreamBatches:
    """A corpus cut into `batch_size` parallel streams, read in consecutive windows of `seq_len`.

    Window k of every stream follows window k-1, so the trainer can carry the recurrent state
    across windows (truncated backpropagation through time, as char-rnn does): the model learns
    from context far longer than one window. Under distributed training each rank takes its own
    `batch_size` streams out of `world * batch_size`. `batch_size` is an upper bound: a text too
    short for that many streams of two characters is read as fewer (`self.batch_size` says how many).
    """

    stateful = True

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        batch_size = max(1, min(batch_size, (len(ids) - 1) // (2 * world)))
        streams = batch_size * world
        length = (len(ids) - 1) // streams
        if length < 2:
            raise ValueError(
                f"the training text ({len(ids)} characters) is too short: at least {MIN_CORPUS_CHARS * world} "
                "are needed"
            )
        self.batch_size = batch_size
        self.seq_len = min(seq_len, length)
        self.steps_per_epoch = max(1, length // self.seq_len)
        usable = length * streams
        x = ids[:usable].view(streams, length)[rank * batch_size : (rank + 1) * batch_size]  # (B, L)
        y = ids[1 : usable + 1].view(streams, length)[rank * batch_size : (rank + 1) * batch_size]  # (B, L)
        self.inputs, self.targets = x.contiguous(), y.contiguous()
        self.chars_per_step = batch_size * self.seq_len

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        t = self.seq_len
        for k in range(self.steps_per_epoch):
            yield self.inputs[:, k * t : (k + 1) * t], self.targets[:, k * t : (k + 1) * t]
