"""The benchmarks still run: each prints one JSON object (tiny sizes here; the real runs are in the README)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"

pytestmark = pytest.mark.server


def run_bench(*args: str, timeout: float = 110) -> dict:
    out = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.skipif(not (CORPORA / "shakespeare_train.txt").exists(), reason="needs ../shared/corpora")
def test_generation_bench_compares_with_the_tutorial_sampler():
    result = run_bench("bench/generation.py", "--lengths", "20,40", "--repeats", "1", "--prefix-chars", "2000")
    assert all(row["same_text"] for row in result["default_model"] + result["lstm_2x256_embedding"])
    assert result["default_model_http"]["http_chars_per_s"] > 0
    costs = result["sampler_step_costs"]["default_model"]
    assert {"greedy_us_per_char", "logprobs5_us_per_char", "regex_us_per_char"} <= set(costs)
    assert "greedy" in costs["outside_products_us_per_char"]
    for row in result["one_stream_at_the_limit"]["lstm_2x256_embedding"]:
        assert row["bound_us_per_step"] > 0 and row["greedy_fraction_of_bound"] > 0
        assert row["greedy_compiled_chars_per_s"] > 0 and row["t0.8_reference_chars_per_s"] > 0
    assert result["lstm_2x256_http_one_request"]["http_chars_per_s"] > 0
    assert result["cpu"]


@pytest.mark.skipif(not (CORPORA / "shakespeare_train.txt").exists(), reason="needs ../shared/corpora")
def test_serve_bench_quick_run_has_no_errors():
    result = run_bench("bench/serve.py", "--quick")
    assert {r["errors"] for r in result["results"] + result["float32_reference"]} == {0}
    assert result["summary"]["roofline_chars_per_s"] > 0


@pytest.mark.skipif(not (CORPORA / "shakespeare_val.txt").exists(), reason="needs ../shared/corpora")
def test_quality_bench_reports_the_figures_the_issue_names():
    result = run_bench("bench/quality.py", "--seconds", "3")
    for key in ("val_nats_per_char", "val_bits_per_char", "train_chars_per_s", "steps", "config"):
        assert key in result
    assert result["config"]["train"]["max_seconds"] == 3
    assert result["config"]["size_class"] == "large" and result["stopped"] == "budget"  # the same chooser as /train
