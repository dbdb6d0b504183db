import pytest
import torch

from app.lm.generate import FEED_IN_BATCH, PREFILL_CHUNK, DecodeBatch, generate
from app.lm.model import CharRNN, ModelConfig
from app.lm.sampling import SamplingParams, Sequence, sample_next
from app.lm.train import build_model
from app.lm.vocab import UNK_INDEX, Vocab


@pytest.fixture(scope="module")
def lstm():
    vocab = Vocab.from_text("abcdefgh ")
    model = build_model(ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=16, num_layers=2), seed=1)
    return model.eval(), vocab


def tutorial_greedy(model: CharRNN, vocab: Vocab, prefix: str, new: int) -> str:
    """The tutorial's sampler: the whole text so far through the network for every character."""
    ids = vocab.encode(prefix)
    with torch.no_grad():
        for _ in range(new):
            logits, _ = model(torch.tensor([ids]))
            last = logits[0, -1].clone()
            last[UNK_INDEX] = float("-inf")
            ids.append(int(last.argmax()))
    return vocab.decode(ids)


def test_incremental_decoding_matches_rerunning_the_whole_prefix(lstm):
    model, vocab = lstm
    out = generate(model, vocab, "abc", SamplingParams(max_new_chars=30))[0]
    assert "abc" + out.text == tutorial_greedy(model, vocab, "abc", 30)
    assert out.finish_reason == "length"


def test_sampling_is_reproducible_per_seed_and_differs_between_choices(lstm):
    model, vocab = lstm
    params = SamplingParams(max_new_chars=40, temperature=1.5)
    a = [s.text for s in generate(model, vocab, "ab", params, n=3, seed=7)]
    b = [s.text for s in generate(model, vocab, "ab", params, n=3, seed=7)]
    assert a == b
    assert len(set(a)) > 1


def test_a_sequence_gives_the_same_text_alone_or_in_a_batch(lstm):
    model, vocab = lstm
    params = SamplingParams(max_new_chars=50, temperature=1.0, top_p=0.9)
    alone = generate(model, vocab, "hag", params, seed=123)[0].text
    batch = DecodeBatch(model, vocab)
    crowd = [Sequence(SamplingParams(max_new_chars=k, temperature=0.7), seed=k) for k in range(1, 20)]
    target = Sequence(params, seed=123)
    batch.add("bad", crowd[:10])
    batch.step()
    batch.add("hag", [target])
    batch.add("fee", crowd[10:])
    while batch.busy:
        batch.step()
    assert target.text == alone


@pytest.mark.parametrize("length", [FEED_IN_BATCH, FEED_IN_BATCH + 1, PREFILL_CHUNK * 2 + 7])
def test_short_and_long_prefixes_are_read_exactly_once_and_correctly(lstm, length):
    model, vocab = lstm
    prefix = ("abcdefgh " * 200)[:length]
    out = generate(model, vocab, prefix, SamplingParams(max_new_chars=12))[0]
    assert prefix + out.text == tutorial_greedy(model, vocab, prefix, 12)


def test_a_long_prefix_joins_a_running_batch_without_changing_anyone(lstm):
    model, vocab = lstm
    params = SamplingParams(max_new_chars=40, temperature=0.9)
    long_prefix = "bad cafe " * 150
    alone = {p: generate(model, vocab, p, params, seed=5)[0].text for p in ("ab", long_prefix)}
    batch = DecodeBatch(model, vocab)
    short, long_ = Sequence(params, 5), Sequence(params, 5)
    batch.add("ab", [short])
    batch.step()
    batch.add(long_prefix, [long_])
    assert len(batch) == 2  # counted while its prefix is read
    while batch.busy:
        batch.step()
    assert short.text == alone["ab"] and long_.text == alone[long_prefix]


def test_removed_sequences_leave_even_while_their_prefix_is_read(lstm):
    model, vocab = lstm
    batch = DecodeBatch(model, vocab)
    a, b = Sequence(SamplingParams(max_new_chars=1000), 1), Sequence(SamplingParams(max_new_chars=1000), 2)
    batch.add("x" * 2000, [a])
    batch.add("ab", [b])
    batch.step()
    batch.remove([a, b])
    assert not batch.busy and len(batch) == 0


def test_unk_is_never_generated():
    logits = torch.zeros(4, 6)
    logits[:, UNK_INDEX] = 100.0  # UNK would win every time if allowed
    seqs = [Sequence(SamplingParams(temperature=t), seed=i) for i, t in enumerate([0.0, 0.5, 1.0, 2.0])]
    for _ in range(50):
        assert UNK_INDEX not in sample_next(logits.clone(), seqs)


def test_uniforms_drawn_in_blocks_equal_one_draw_per_call():
    import numpy as np

    seq = Sequence(SamplingParams(temperature=1.0), seed=9, index=2)
    reference = np.random.default_rng([9, 2])
    assert [seq.uniform() for _ in range(200)] == [reference.random() for _ in range(200)]


def test_top_k_one_is_greedy():
    logits = torch.randn(3, 10)
    seqs = [Sequence(SamplingParams(temperature=1.0, top_k=1), seed=i) for i in range(3)]
    masked = logits.clone()
    masked[:, UNK_INDEX] = float("-inf")
    assert sample_next(logits.clone(), seqs) == masked.argmax(-1).tolist()


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[1e-9, 0.6, 0.3, 0.1]]))
    seq = Sequence(SamplingParams(temperature=1.0, top_p=0.5), seed=0)
    assert {sample_next(logits.clone(), [seq])[0] for _ in range(200)} == {1}
    seq = Sequence(SamplingParams(temperature=1.0, top_p=0.85), seed=0)
    assert {sample_next(logits.clone(), [seq])[0] for _ in range(400)} == {1, 2}


def test_stop_string_ends_generation_and_is_not_included():
    seq = Sequence(SamplingParams(max_new_chars=100, stop=("am",)), seed=0)
    for ch in " i am fine":
        if seq.finished:
            break
        seq.append(1, ch)
    assert seq.text == " i "
    assert seq.finish_reason == "stop"


def test_stream_holds_back_a_possible_stop_string():
    seq = Sequence(SamplingParams(max_new_chars=100, stop=("fine", "xyz")), seed=0)
    released = []
    for ch in " i am fin":
        seq.append(1, ch)
        released.append(seq.take_new_text())
    assert "".join(released) == " i am "  # "fin" may still become "fine"
    seq.append(1, "d")
    assert seq.take_new_text() == "find"
    seq2 = Sequence(SamplingParams(max_new_chars=100, stop=("fine",)), seed=0)
    out = ""
    for ch in "a fine":
        seq2.append(1, ch)
        out += seq2.take_new_text()
    assert out == "a " and seq2.finish_reason == "stop"


def test_max_new_chars_zero_returns_the_prefix_only(lstm):
    model, vocab = lstm
    out = generate(model, vocab, "abc", SamplingParams(max_new_chars=0))[0]
    assert out.text == "" and out.finish_reason == "length"


def test_a_prefix_resumed_from_a_kept_start_encodes_and_reads_only_the_rest(lstm, monkeypatch):
    from app.lm.prefix_cache import PrefixCache

    model, vocab = lstm
    params = SamplingParams(max_new_chars=30, temperature=0.9, repetition_penalty=1.3, repeat_last_n=8)
    start = "abc defgh " * 10
    grown = start + "hgf edcba " * 6  # a chat history that grew

    def run(prefix: str, cache: PrefixCache | None) -> str:
        batch = DecodeBatch(model, vocab, prefix_cache=cache)
        [seq] = seqs = [Sequence(params, seed=3)]
        batch.add(prefix, seqs, namespace="tenant")
        while batch.busy:
            batch.step(max_steps=100)
        return seq.text

    cache = PrefixCache(1_000_000)
    run(start, cache)
    encoded: list[int] = []
    real_encode = vocab.encode
    monkeypatch.setattr(vocab, "encode", lambda text: encoded.append(len(text)) or real_encode(text))
    resumed = run(grown, cache)
    assert cache.hits == 1
    assert max(encoded) == len(grown) - (len(start) - 1)  # what follows the kept state; the window's 8 apart
    monkeypatch.undo()
    assert resumed == run(grown, None)
