"""The embedded default model: the tutorial's three sentences and its hyperparameters."""

from __future__ import annotations

from app.lm.train import TrainConfig

DEFAULT_MODEL_NAME = "default"
SENTENCES = ["hey how are you", "good i am fine", "have a nice day"]
# One-layer tanh RNN, hidden 12, one-hot input, Adam lr 0.01, 100 full-batch epochs, no clipping:
# the tutorial's settings, with a fixed seed so every fresh install trains the same weights.
MODEL_KWARGS = {"cell": "rnn", "hidden_size": 12, "num_layers": 1, "encoding": "one_hot"}
TRAIN_CONFIG = TrainConfig(epochs=100, learning_rate=0.01, batch_size=len(SENTENCES), seed=0, grad_clip=0.0)
