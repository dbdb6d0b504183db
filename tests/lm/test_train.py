import pytest
import torch

from app.lm import default
from app.lm.generate import SamplingParams, generate
from app.lm.train import TrainConfig, TrainingCancelled, train_on_text


def complete(model, vocab, prefix):
    return prefix + generate(model, vocab, prefix, SamplingParams(max_new_chars=15 - len(prefix)))[0].text


def test_default_model_reproduces_the_tutorial():
    trained = train_on_text(sentences=default.SENTENCES, config=default.TRAIN_CONFIG, **default.MODEL_KWARGS)
    model, vocab, cfg, result = trained.model, trained.vocab, trained.model_config, trained.result
    assert (cfg.cell, cfg.hidden_size, cfg.num_layers, cfg.encoding) == ("rnn", 12, 1, "one_hot")
    assert result.steps == 100 and result.final_loss < 0.5
    assert complete(model, vocab, "good") == "good i am fine "
    assert complete(model, vocab, "hey") == "hey how are you"
    assert complete(model, vocab, "have") == "have a nice day"


def test_training_is_deterministic_for_a_seed():
    kw = dict(corpus="abcabcabd " * 20, cell="gru", hidden_size=16, config=TrainConfig(epochs=3, seq_len=10, seed=4))
    a = train_on_text(**kw).model
    b = train_on_text(**kw).model
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_corpus_training_lowers_the_loss_and_reports_progress():
    seen = []
    result = train_on_text(
        corpus="the cat sat on the mat. " * 40,
        cell="lstm",
        hidden_size=32,
        encoding="embedding",
        config=TrainConfig(epochs=15, seq_len=20, batch_size=8, learning_rate=0.02),
        on_progress=seen.append,
    ).result
    assert result.history[-1].train_loss < result.history[0].train_loss * 0.5
    assert [p.step for p in seen] == list(range(1, result.steps + 1))
    assert seen[-1].total_steps == result.steps


def test_cancel_stops_training():
    with pytest.raises(TrainingCancelled):
        train_on_text(corpus="abc " * 100, config=TrainConfig(epochs=1000), should_stop=lambda: True)
