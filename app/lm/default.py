"""The embedded default model (the tutorial's), and the recommended settings for a user's corpus."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.lm.train import TrainConfig

SENTENCES = ["hey how are you", "good i am fine", "have a nice day"]
# One-layer tanh RNN, hidden 12, one-hot input, Adam lr 0.01, 100 full-batch epochs, no clipping:
# the tutorial's settings, with a fixed seed so every fresh install trains the same weights.
MODEL_KWARGS: dict[str, Any] = {"cell": "rnn", "hidden_size": 12, "num_layers": 1, "encoding": "one_hot"}
TRAIN_CONFIG = TrainConfig(epochs=100, learning_rate=0.01, batch_size=len(SENTENCES), seed=0, grad_clip=0.0)

# Sentences sent to /train without settings are trained the tutorial's way.
SENTENCE_MODEL = dict(MODEL_KWARGS)
SENTENCE_TRAIN = TrainConfig(epochs=100, learning_rate=0.01, batch_size=64, grad_clip=5.0)

# A corpus sent without settings: chosen with bench/quality.py on Shakespeare (the README has the
# figures). Two LSTM layers on a small embedding, no dropout; parallel streams with the state
# carried across windows; AdamW at a high peak rate with warm-up and cosine decay over a time
# budget, decoupled weight decay and a moving average of the weights as the model that is
# validated and kept (together they generalise better to text unlike the corpus than dropout
# did, and dropout off makes steps faster); bfloat16 matrix products where native.
CORPUS_MODEL = {
    "cell": "lstm",
    "hidden_size": 320,
    "num_layers": 2,
    "encoding": "embedding",
    "embedding_dim": 64,
    "dropout": 0.0,
}
CORPUS_TRAIN = TrainConfig(
    epochs=50,
    max_seconds=300.0,
    learning_rate=6e-3,
    batch_size=32,
    seq_len=64,  # 128 before: windows of 64 give twice the updates in the same minutes (1.6375 -> 1.6053 median)
    warmup_steps=50,
    lr_schedule="cosine",
    min_lr_ratio=0.05,
    val_fraction=0.05,
    eval_interval=200,
    grad_clip=5.0,
    weight_decay=0.3,
    ema_decay=0.998,
    unk_dropout=0.001,
    precision="auto",  # bfloat16 where the CPU (AVX512-BF16/AMX) or GPU does it natively
)

# Corpora much smaller or larger than the one the settings above were chosen on get settings that fit
# them (corpus_settings): the time budget ends every run (epochs only bound it), so a small text keeps
# training through its warm-up and for its whole budget; a small text gets a smaller model, more
# regularisation and more frequent validation; a huge one a validation split of bounded size.
SIZE_CLASSES = (  # (corpus characters below, its name)
    (50_000, "small"),
    (300_000, "medium"),
    (20_000_000, "large"),
)
MAX_VAL_CHARS = 200_000  # validation reads this much at most, whatever the corpus size
EPOCHS_BOUND = 100_000  # the time budget ends corpus runs; this only bounds them


def size_class(chars: int) -> str:
    return next((name for below, name in SIZE_CLASSES if chars < below), "huge")


def corpus_settings(chars: int) -> tuple[dict, TrainConfig]:
    """The recommended model and training settings for a corpus of `chars` characters."""
    kind = size_class(chars)
    model, train = dict(CORPUS_MODEL), CORPUS_TRAIN
    if kind == "small":
        model |= {"hidden_size": 128, "num_layers": 1, "embedding_dim": 32, "dropout": 0.1}
        train = replace(train, batch_size=16, seq_len=64, val_fraction=0.1, eval_interval=50, warmup_steps=20)
    elif kind == "medium":
        model |= {"hidden_size": 256}
        train = replace(train, eval_interval=100)
    elif kind == "huge":
        train = replace(train, val_fraction=max(MAX_VAL_CHARS / chars, 0.001))
    return model, replace(train, epochs=EPOCHS_BOUND)
