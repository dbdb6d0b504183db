"""The recommended corpus settings fit the text: each size class, and a 4 KB text trained end to end."""

import random

import pytest

from app.lm import default
from app.lm.train import TrainConfig, train_on_text
from app.service.training import TrainSpec


@pytest.mark.parametrize(
    ("chars", "kind", "hidden", "layers", "val_fraction"),
    [
        (4_000, "small", 128, 1, 0.1),
        (100_000, "medium", 256, 2, 0.05),
        (1_160_000, "large", 320, 2, 0.05),  # the corpus the settings were tuned on: unchanged
        (50_000_000, "huge", 320, 2, default.MAX_VAL_CHARS / 50_000_000),
    ],
)
def test_each_size_class_gets_settings_that_fit(chars, kind, hidden, layers, val_fraction):
    model, train = default.corpus_settings(chars)
    assert default.size_class(chars) == kind
    assert (model["hidden_size"], model["num_layers"]) == (hidden, layers)
    assert train.val_fraction == pytest.approx(val_fraction)
    assert train.epochs == default.EPOCHS_BOUND  # the time budget, not the epochs, ends a run
    assert train.max_seconds == default.CORPUS_TRAIN.max_seconds
    assert chars * train.val_fraction <= max(default.MAX_VAL_CHARS, chars * 0.1)  # validation stays bounded


def test_settings_the_caller_gives_win_and_sentences_keep_the_tutorials():
    spec = TrainSpec(name="x", corpus="abc " * 1000, options={"hidden_size": 64, "val_fraction": 0.2})
    assert spec.architecture()["hidden_size"] == 64 and spec.train_config().val_fraction == 0.2
    assert spec.settings()["size_class"] == "small" and spec.settings()["num_layers"] == 1
    tutorial = TrainSpec(name="y", sentences=["good i am fine"])
    assert tutorial.architecture() == default.SENTENCE_MODEL and tutorial.train_config() == default.SENTENCE_TRAIN
    assert tutorial.settings()["size_class"] is None


def test_a_4kb_text_trains_through_its_warm_up_and_stops_for_the_reason_it_gives():
    rng = random.Random(0)
    # 60 made-up words: enough to learn that validation keeps improving after the first evaluation
    # (17 common words were learnt by step 50, and a faster machine then only overfitted them)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7))) for _ in range(60)]
    text = " ".join(rng.choice(words) for _ in range(1000))[:4000]  # 4 KB of varied text
    spec = TrainSpec(name="x", corpus=text, options={"max_seconds": 4.0, "precision": "fp32"})
    config = spec.train_config()
    trained = train_on_text(corpus=text, config=config, **spec.architecture())
    r = trained.result
    assert r.stopped == "budget" and r.steps > config.warmup_steps  # past its warm-up, on until the budget
    assert r.best_val_loss < r.history[0].val_loss and r.best_step > config.warmup_steps
    capped = train_on_text(
        corpus=text, config=TrainConfig(**{**config.to_json(), "max_steps": 7}), **spec.architecture()
    )
    assert capped.result.stopped == "max_steps" and capped.result.steps == 7
