"""What a job reports for a person watching it: a training loss curve from the first step on, bounded
for long jobs, and a sample of the model's text at its evaluations (GET /train/{id} and its events)."""

from __future__ import annotations

import json
import math

import pytest

from app.lm.train import SAMPLE_CHARS, SAMPLE_INTERVAL
from app.service.jobs import LossCurve
from tests.conftest import wait_for_job
from tests.sse import parse_events

CORPUS = "the cat sat on the mat and the dog sat on the log.\n" * 80
SMALL = {"hidden_size": 32, "batch_size": 4, "seq_len": 32, "epochs": 4, "eval_interval": 10, "precision": "fp32"}


def test_the_loss_curve_has_points_before_the_first_evaluation_and_every_few_steps(fresh_client):
    # one evaluation, at the end: until then, the curve is all there is to draw
    body = {"name": "curve", "corpus": CORPUS, **SMALL, "epochs": 10, "eval_interval": 100_000}
    job_id = fresh_client.post("/train", json=body).json()["job_id"]
    with fresh_client.stream("GET", f"/train/{job_id}/events") as r:
        events = [e for e in parse_events(r.iter_lines()) if e != "[DONE]"]
    assert events[-1]["status"] == "succeeded"
    # the chart has points while `history` (the evaluations) is still empty
    early = [e for e in events if e["step"] > 0 and not e["history"]]
    assert early and all(e["loss_history"] for e in early)
    job = fresh_client.get(f"/train/{job_id}").json()
    curve = job["loss_history"]
    assert curve[0]["step"] == 1  # from the first step on
    steps = [p["step"] for p in curve]
    assert steps == sorted(set(steps)) and steps[-1] == job["step"]
    assert all(b - a <= 10 for a, b in zip(steps, steps[1:], strict=False))  # every 10 steps (or second)
    assert all(math.isfinite(p["train_loss"]) and p["train_loss"] > 0 for p in curve)
    assert [p["elapsed"] for p in curve] == sorted(p["elapsed"] for p in curve)
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]  # it learned


def test_the_last_evaluation_carries_a_sample_of_the_models_text_in_the_status_and_its_events(fresh_client):
    job_id = fresh_client.post("/train", json={"name": "sampled", "corpus": CORPUS, **SMALL}).json()["job_id"]
    with fresh_client.stream("GET", f"/train/{job_id}/events") as r:
        events = [e for e in parse_events(r.iter_lines()) if e != "[DONE]"]
    assert any(h["sample"] for e in events for h in e["history"])  # the stream carries them
    history = fresh_client.get(f"/train/{job_id}").json()["history"]
    last = history[-1]["sample"]
    assert isinstance(last, str) and len(last) == SAMPLE_CHARS  # after a newline, which is not shown
    assert set(last) <= set(CORPUS)
    samples = [h for h in history if h["sample"] is not None]
    assert 1 <= len(samples) <= len(history)


def test_a_sentence_job_validates_every_step_but_writes_a_sample_at_most_once_a_second(fresh_client):
    body = {"name": "greetings", "sentences": ["hey how are you", "good i am fine", "have a nice day"]}
    job = wait_for_job(fresh_client, fresh_client.post("/train", json=body).json()["job_id"])
    assert job["status"] == "succeeded"
    assert len(job["history"]) == job["step"]  # one evaluation per step
    samples = [h for h in job["history"] if h["sample"] is not None]
    assert 1 <= len(samples) <= 2 + job["elapsed"] / SAMPLE_INTERVAL
    assert job["history"][-1]["sample"] is not None  # the last always has one
    assert samples[0]["sample"].startswith("h")  # from the text's first character (it has no newline)
    assert len(samples[0]["sample"]) == 1 + SAMPLE_CHARS
    assert len(job["loss_history"]) >= 2


def test_a_long_jobs_curve_stays_bounded_evenly_spaced_and_true_to_the_mean():
    curve = LossCurve(max_points=500, every_steps=10, every_seconds=1.0)
    steps = 200_000
    for step in range(1, steps + 1):
        curve.add(step, loss=4.0 * math.exp(-step / 50_000), elapsed=step * 0.01)
    curve.flush(steps, steps * 0.01)
    points = curve.points
    assert 250 <= len(points) <= 500
    assert len(json.dumps(points)) < 50_000  # what every status and event carries
    at = [p["step"] for p in points]
    assert at == sorted(set(at)) and at[-1] == steps
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    assert max(gaps[:-1]) <= 2 * min(gaps[:-1])  # evenly spaced after thinning
    losses = [p["train_loss"] for p in points]
    assert losses == sorted(losses, reverse=True)
    # each point is the mean of the steps since the point before: merging loses no step
    weighted = sum(p["train_loss"] * g for p, g in zip(points[1:], gaps, strict=True)) / (steps - at[0])
    true_mean = sum(4.0 * math.exp(-s / 50_000) for s in range(at[0] + 1, steps + 1)) / (steps - at[0])
    assert weighted == pytest.approx(true_mean, rel=1e-9)


def test_a_short_jobs_curve_keeps_a_point_every_few_steps():
    curve = LossCurve(max_points=500, every_steps=10, every_seconds=1.0)
    for step in range(1, 26):
        curve.add(step, loss=1.0, elapsed=step * 0.001)
    curve.flush(25, 0.025)
    assert [p["step"] for p in curve.points] == [1, 11, 21, 25]
