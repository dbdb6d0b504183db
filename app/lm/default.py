"""The embedded default model (the tutorial's), and the recommended settings for a user's corpus."""

from __future__ import annotations

from app.lm.train import TrainConfig

DEFAULT_MODEL_NAME = "default"
SENTENCES = ["hey how are you", "good i am fine", "have a nice day"]
# One-layer tanh RNN, hidden 12, one-hot input, Adam lr 0.01, 100 full-batch epochs, no clipping:
# the tutorial's settings, with a fixed seed so every fresh install trains the same weights.
MODEL_KWARGS = {"cell": "rnn", "hidden_size": 12, "num_layers": 1, "encoding": "one_hot"}
TRAIN_CONFIG = TrainConfig(epochs=100, learning_rate=0.01, batch_size=len(SENTENCES), seed=0, grad_clip=0.0)

# Sentences sent to /train without settings are trained the tutorial's way.
SENTENCE_MODEL = dict(MODEL_KWARGS)
SENTENCE_TRAIN = TrainConfig(epochs=100, learning_rate=0.01, batch_size=64, grad_clip=5.0)

# A corpus sent without settings: chosen with bench/quality.py (Shakespeare, 1.16 MB, 2-core CPU;
# see the README). Two LSTM layers of 320 on a 64-wide embedding, light dropout; 32 parallel
# streams of 128 characters with the state carried across windows; AdamW at a high peak rate
# with warm-up and cosine decay over a 5-minute budget; bfloat16 matrix products.
CORPUS_MODEL = {
    "cell": "lstm",
    "hidden_size": 320,
    "num_layers": 2,
    "encoding": "embedding",
    "embedding_dim": 64,
    "dropout": 0.05,
}
CORPUS_TRAIN = TrainConfig(
    epochs=50,
    max_seconds=300.0,
    learning_rate=6e-3,
    batch_size=32,
    seq_len=128,
    warmup_steps=50,
    lr_schedule="cosine",
    min_lr_ratio=0.05,
    val_fraction=0.05,
    eval_interval=200,
    grad_clip=5.0,
    unk_dropout=0.001,
    precision="bf16",
)
