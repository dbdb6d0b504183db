"""The charrnn command line: train, complete and score with the service's code and model_store."""

import json
import subprocess
import sys

import pytest

from tests.server import ROOT

CORPUS = "to be or not to be, that is the question. " * 60


def charrnn(*args, env=None, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_then_complete_and_score(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    store = str(tmp_path / "store")
    common = ["--model-store", store, "--device", "cpu"]
    out = charrnn(
        "train", "--corpus", str(corpus), "--name", "hamlet", "--activate", "--quiet", *common,
        "--hidden-size", "32", "--batch-size", "4", "--seq-len", "32", "--epochs", "3", "--precision", "fp32",
    )  # fmt: skip
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["name"] == "hamlet" and summary["steps"] > 0 and summary["best_val_loss"] is not None
    assert (tmp_path / "store" / "hamlet.safetensors").exists()
    completions = charrnn("complete", "to be", "--max-new-chars", "20", "-n", "2", "--temperature", "0.5", *common)
    lines = completions.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("to be") for line in lines)
    score = json.loads(charrnn("score", "--text", "to be or not to be", *common))
    assert score["model"] == "hamlet" and score["chars_scored"] == 17 and score["bits_per_char"] > 0


@pytest.mark.server
def test_distributed_training_with_torchrun_on_two_cpu_processes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 2)
    store = tmp_path / "store"
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "app", "train", "--corpus", str(corpus), "--name", "ddp", "--quiet",
            "--model-store", str(store), "--device", "cpu",
            "--hidden-size", "32", "--batch-size", "4", "--seq-len", "32", "--epochs", "4",
            "--eval-interval", "5", "--precision", "fp32",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports
    summary = summaries[0]
    assert summary["world_size"] == 2
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert sorted(p.name for p in store.iterdir()) == ["ddp.json", "ddp.optim.safetensors", "ddp.safetensors"]
