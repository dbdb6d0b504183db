"""The sampler chain on known logits: each option changes the distribution the way its definition says."""

import math

import numpy as np
import pytest
import torch

from app.lm.constraint import compile_regex
from app.lm.sampling import END, SamplingParams, Sequence, sample_next
from app.lm.score import log_probs
from app.lm.vocab import UNK_INDEX, Vocab

VOCAB = Vocab.from_text("abcd")  # ids: 0 UNK, then a b c d
A, B, C, D = (VOCAB.encode(ch)[0] for ch in "abcd")


def logits_of(probs: dict[str, float]) -> torch.Tensor:
    """Logits whose softmax (UNK at -inf-ish) gives these probabilities."""
    row = torch.full((VOCAB.size,), -30.0)
    for ch, p in probs.items():
        row[VOCAB.encode(ch)[0]] = math.log(p)
    return row


def started(params: SamplingParams, seed: int = 0, prefix: str = "", constraint=None) -> Sequence:
    seq = Sequence(params, seed, 0, constraint)
    seq.start(prefix, VOCAB)
    return seq


def frequencies(params: SamplingParams, row: torch.Tensor, draws: int = 4000) -> dict[int, float]:
    seq = started(params, seed=1)
    counts: dict[int, int] = {}
    for _ in range(draws):
        [i] = sample_next(row[None], [seq])
        counts[i] = counts.get(i, 0) + 1
    return {i: c / draws for i, c in counts.items()}


PROBS = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}


def test_min_p_drops_characters_below_its_share_of_the_likeliest_and_renormalises():
    seen = frequencies(SamplingParams(temperature=1.0, min_p=0.2), logits_of(PROBS))
    assert D not in seen  # 0.05 < 0.2 * 0.5
    kept = PROBS["a"] + PROBS["b"] + PROBS["c"]
    for ch, i in (("a", A), ("b", B), ("c", C)):
        assert seen[i] == pytest.approx(PROBS[ch] / kept, abs=0.03)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_recent_characters():
    seq = started(SamplingParams(repetition_penalty=2.0, repeat_last_n=2), prefix="dab")  # window: a, b
    x = np.array([0.0, 3.0, -1.0, 3.0, 1.0])
    seq.adjust(x)
    assert x.tolist() == [0.0, 1.5, -2.0, 3.0, 1.0]  # a: 3/2, b: -1*2; c untouched; d outside the window
    seq.append(C, "c")  # the window slides: b, c
    x = np.array([0.0, 3.0, -1.0, 3.0, 1.0])
    seq.adjust(x)
    assert x.tolist() == [0.0, 3.0, -2.0, 1.5, 1.0]


def test_repetition_penalty_changes_the_greedy_choice():
    row = logits_of({"a": 0.5, "b": 0.45, "c": 0.05})
    assert sample_next(row[None], [started(SamplingParams(), prefix="a")]) == [A]
    assert sample_next(row[None], [started(SamplingParams(repetition_penalty=1.5), prefix="a")]) == [B]


def test_presence_and_frequency_penalties_count_generated_characters_only():
    seq = started(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prefix="dddd")
    for i, ch in ((A, "a"), (A, "a"), (B, "b")):
        seq.append(i, ch)
    x = np.zeros(VOCAB.size)
    seq.adjust(x)
    assert x.tolist() == [0.0, -(0.5 + 0.5), -(0.5 + 0.25), 0.0, 0.0]  # d in the prefix: untouched


def test_logit_bias_is_added_before_the_choice():
    row = logits_of(PROBS)
    assert sample_next(row[None], [started(SamplingParams(logit_bias=((D, 5.0),)))]) == [D]
    seen = frequencies(SamplingParams(temperature=1.0, logit_bias=((A, -100.0),)), row, draws=500)
    assert A not in seen


def test_logprobs_are_the_models_own_distribution_before_any_sampler_step():
    row = logits_of(PROBS)
    params = SamplingParams(temperature=0.7, top_k=2, repetition_penalty=3.0, logprobs=3)
    seq = started(params, prefix="a")
    [chosen] = sample_next(row[None], [seq])
    [record] = seq.logprobs
    expected = log_probs(row).numpy()
    assert record.id == chosen and record.logprob == pytest.approx(float(expected[chosen]))
    assert [i for i, _ in record.top] == [A, B, C]  # likeliest first, UNK never
    assert [v for _, v in record.top] == pytest.approx([float(expected[i]) for i in (A, B, C)])
    assert sum(math.exp(v) for _, v in record.top) <= 1.0


def test_logprobs_zero_reports_the_chosen_character_only():
    seq = started(SamplingParams(logprobs=0))
    sample_next(logits_of(PROBS)[None], [seq])
    assert seq.logprobs[0].top == ()


def test_unk_is_never_an_alternative():
    row = torch.tensor([5.0, 1.0, 0.0, -1.0, -2.0])  # UNK the likeliest of all
    seq = started(SamplingParams(logprobs=4))
    assert sample_next(row[None], [seq]) != [UNK_INDEX]
    assert UNK_INDEX not in [i for i, _ in seq.logprobs[0].top]


def test_a_regex_masks_what_cannot_continue_and_ends_when_the_likeliest_cannot():
    vocab_digits = Vocab.from_text("0123456789-x")
    automaton = compile_regex("[0-9]{2}(-[0-9])?", vocab_digits)
    seq = Sequence(SamplingParams(max_new_chars=10), 0, 0, automaton)
    seq.start("", vocab_digits)
    row = torch.zeros(vocab_digits.size)
    row[vocab_digits.encode("x")[0]] = 9.0  # the model prefers x, which the pattern never allows
    row[vocab_digits.encode("7")[0]] = 1.0
    for _ in range(2):
        [i] = sample_next(row[None], [seq])
        seq.append(i, vocab_digits.id_to_char(i))
    assert seq.text == "77" and not seq.finished
    [i] = sample_next(row[None], [seq])  # a complete match: x cannot continue it, so greedy ends
    assert i == END
    seq.append(i, "")
    assert seq.finish_reason == "stop" and seq.text == "77"
