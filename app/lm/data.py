"""Text -> training tensors: the tutorial's padded sentences, or contiguous windows of a corpus."""

from __future__ import annotations

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


def corpus_pairs(vocab: Vocab, text: str, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of `seq_len` characters; each target is its input shifted by one."""
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    if len(ids) < 2:
        raise ValueError("the corpus needs at least 2 characters")
    seq_len = min(seq_len, len(ids) - 1)
    count = (len(ids) - 1) // seq_len
    inputs = ids[: count * seq_len].view(count, seq_len)  # (N, T)
    targets = ids[1 : count * seq_len + 1].view(count, seq_len)  # (N, T)
    return inputs, targets
