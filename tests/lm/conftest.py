"""What the decoding paths' tests share: a small trained LSTM and the sampling settings they compare."""

import pytest

from app.lm.sampling import SamplingParams
from app.lm.train import TrainConfig, train_on_text

# every decoding path chooses what torch's one-step reference path chooses, under each of these
CASES = {
    "greedy": SamplingParams(max_new_chars=300),
    "t1.0": SamplingParams(max_new_chars=300, temperature=1.0),
    "t0.8_topk5": SamplingParams(max_new_chars=300, temperature=0.8, top_k=5),
    "t1.2_topp0.9_minp": SamplingParams(max_new_chars=300, temperature=1.2, top_p=0.9, min_p=0.05),
    "stops": SamplingParams(max_new_chars=300, temperature=1.0, stop=("og", "ump", "zz")),
}


@pytest.fixture(scope="session")
def trained():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    config = TrainConfig(max_steps=60, seed=0, max_seconds=60)
    return train_on_text(corpus=text, config=config, cell="lstm", hidden_size=48, num_layers=2, encoding="embedding")
