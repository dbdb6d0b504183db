"""Quality: train the recommended configuration for a time budget, score held-out Shakespeare; prints JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from app.lm.generate import SamplingParams, generate
from app.lm.score import score_text
from app.lm.train import train_on_text
from app.service.training import TrainSpec

ROOT = Path(__file__).resolve().parent.parent

CORPORA = ROOT.parent / "shared" / "corpora"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="training budget (wall clock)")
    parser.add_argument("--train", type=Path, default=CORPORA / "shakespeare_train.txt")
    parser.add_argument("--val", type=Path, default=CORPORA / "shakespeare_val.txt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_text = args.train.read_text(encoding="utf-8")
    val_text = args.val.read_text(encoding="utf-8")
    # exactly what /train and `charrnn train` use for this corpus when only the budget and seed are given
    spec = TrainSpec(name="quality", corpus=train_text, options={"max_seconds": args.seconds, "seed": args.seed})
    config, architecture = spec.train_config(), spec.architecture()
    history = []

    def on_progress(p) -> None:
        if p.evaluation is not None:
            e = p.evaluation
            history.append({"step": e.step, "elapsed": round(e.elapsed, 1), "train_loss": round(e.train_loss, 4),
                            "holdout_loss": round(e.val_loss, 4) if e.val_loss is not None else None})  # fmt: skip
            print(json.dumps(history[-1]), file=sys.stderr, flush=True)

    started = time.perf_counter()
    trained = train_on_text(corpus=train_text, config=config, on_progress=on_progress, **architecture)
    train_seconds = time.perf_counter() - started
    result = trained.result
    t = time.perf_counter()
    score = score_text(trained.model, trained.vocab, val_text)
    score_seconds = time.perf_counter() - t
    sample = generate(
        trained.model, trained.vocab, "ROMEO:\n", SamplingParams(max_new_chars=400, temperature=0.8), seed=1
    )[0].text
    chars_trained = result.steps * config.batch_size * min(config.seq_len, len(train_text))
    print(
        json.dumps(
            {
                "bench": "quality",
                "val_nats_per_char": round(score.nats_per_char, 4),
                "val_bits_per_char": round(score.bits_per_char, 4),
                "val_perplexity": round(score.perplexity, 3),
                "val_chars_scored": score.chars_scored,
                "val_scoring": "The Tempest, one stream, state carried through the whole text",
                "holdout_nats_per_char": round(result.best_val_loss, 4) if result.best_val_loss else None,
                "train_chars_per_s": round(chars_trained / train_seconds, 1),
                "train_seconds": round(train_seconds, 1),
                "score_seconds": round(score_seconds, 1),
                "steps": result.steps,
                "epochs": round(chars_trained / trained.train_chars, 2),
                "best_step": result.best_step,
                "config": {"model": trained.model_config.to_json(), "train": config.to_json(), **spec.settings()},
                "stopped": result.stopped,
                "parameters": trained.model.num_parameters(),
                "torch_threads": torch.get_num_threads(),
                "history": history,
                "sample": "ROMEO:\n" + sample,
                "target_nats_per_char": 1.55,
                "meets_target": score.nats_per_char <= 1.55,
                "baselines_measured_here": {"nanoGPT 4x128, 2000 iters, 178 s": 1.99, "LSTM 1x512, 170 s": 1.79},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
