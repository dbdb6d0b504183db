"""Startup: train-or-load, restarts that reuse the checkpoint, and device selection."""

import json
import logging
import os
import re
import subprocess
import sys

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.devserver import ROOT, Server, free_port
from app.main import StartupError, create_app
from tests.conftest import make_settings, serving, wait_for, wait_for_job


def test_first_start_trains_and_saves_then_a_restart_loads_without_training(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="app")
    with serving(create_app(make_settings(tmp_path))) as c:
        first = c.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()
    assert "trained the default model" in caplog.text
    weights = tmp_path / "default.safetensors"
    stamp = weights.stat().st_mtime_ns
    caplog.clear()
    with serving(create_app(make_settings(tmp_path))) as c:
        again = c.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()
    assert "loaded active model 'default'" in caplog.text
    assert "trained" not in caplog.text
    assert weights.stat().st_mtime_ns == stamp
    assert again["choices"] == first["choices"]


def test_a_trained_active_model_survives_a_restart(tmp_path):
    with serving(create_app(make_settings(tmp_path))) as c:
        r = c.post("/train", json={"name": "mine", "sentences": ["good night moon"], "epochs": 120, "activate": True})
        assert wait_for_job(c, r.json()["job_id"])["status"] == "succeeded"
        before = c.post("/complete", json={"prefix": "good", "max_new_chars": 11, "temperature": 0.8, "seed": 3})
    with serving(create_app(make_settings(tmp_path))) as c:
        assert c.get("/health").json()["model"] == "mine"
        after = c.post("/complete", json={"prefix": "good", "max_new_chars": 11, "temperature": 0.8, "seed": 3})
    assert after.json()["choices"] == before.json()["choices"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_device_stops_the_lifespan_with_a_clear_error(tmp_path):
    app = create_app(make_settings(tmp_path).model_copy(update={"device": "cuda"}))
    with (
        pytest.raises(StartupError, match="CHARRNN_DEVICE=cuda: device 'cuda' was asked for but is not available"),
        TestClient(app),
    ):
        pass


@pytest.mark.server
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_device_stops_the_server_with_one_log_line(tmp_path):
    env = {"CHARRNN_MODEL_STORE": str(tmp_path), "CHARRNN_DEVICE": "cuda", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    output = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 2
    assert "Traceback" not in output
    [line] = output.strip().splitlines()
    assert "cannot start: CHARRNN_DEVICE=cuda: device 'cuda' was asked for but is not available" in line
    assert "available: cpu" in line


@pytest.mark.server
def test_real_server_starts_serves_and_restarts_from_its_checkpoint(tmp_path):
    with Server(tmp_path) as server:
        r = httpx.post(server.url + "/complete", json={"prefix": "good", "max_new_chars": 11})
        assert r.json()["choices"][0]["text"] == "good i am fine "
    assert "trained the default model" in server.log()
    with Server(tmp_path) as server:
        r = httpx.post(server.url + "/complete", json={"prefix": "hey", "max_new_chars": 12})
        assert r.json()["choices"][0]["text"] == "hey how are you"
    assert "loaded active model 'default'" in server.log()


def test_the_port_answers_at_once_and_ready_says_when_completions_can_be_served(tmp_path, monkeypatch):
    """While the default model trains: /health is live, /ready and the model routes answer 503
    with Retry-After in the envelope, /train is not blocked; then everything is served."""
    import threading

    from app.service.models import Models

    release = threading.Event()
    original = Models.train_default

    def slow_train_default(self, should_stop):
        assert release.wait(30)
        original(self, should_stop)

    monkeypatch.setattr(Models, "train_default", slow_train_default)
    with TestClient(create_app(make_settings(tmp_path))) as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["ready"] is False and health.json()["model"] is None
        for method, path, body in [
            ("GET", "/ready", None),
            ("POST", "/complete", {"prefix": "good"}),
            ("POST", "/v1/completions", {"prompt": "good"}),
            ("POST", "/score", {"text": "good i am fine"}),
            ("GET", "/vocab", None),
        ]:
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "not_ready" and "loading" in r.json()["error"]["message"]
        job = c.post("/train", json={"name": "mine", "sentences": ["good night moon"], "epochs": 5, "activate": False})
        assert job.status_code == 202, job.text
        assert c.get("/models").status_code == 200
        release.set()
        wait_for(lambda: c.get("/ready").status_code == 200)
        assert c.get("/ready").json() == {
            "status": "ready",
            "model": "default",
            "device": "cpu",
            "decode_dtype": "float32",
        }
        r = c.post("/complete", json={"prefix": "good", "max_new_chars": 11})
        assert r.json()["choices"][0]["text"] == "good i am fine "
        assert wait_for_job(c, job.json()["job_id"])["status"] == "succeeded"


def test_a_start_that_cannot_make_a_model_reports_it_on_ready(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with TestClient(create_app(make_settings(blocker / "store"))) as c:
        r = wait_for(lambda: (r := c.get("/ready")).json()["error"]["message"].startswith("the service cannot") and r)
        assert r.status_code == 503
        assert str(tmp_path) not in r.text  # no server path in a message
        assert c.get("/health").status_code == 200


@pytest.mark.server
def test_a_server_that_cannot_make_a_model_exits_non_zero_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**os.environ, "CHARRNN_MODEL_STORE": str(blocker / "store"), "CHARRNN_DEVICE": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    output = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    [error] = [line for line in output.splitlines() if " ERROR " in line]
    assert "cannot start: no model could be loaded or trained: NotADirectoryError" in error


LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: .+")


@pytest.mark.server
@pytest.mark.parametrize("as_json", [False, True])
def test_the_log_says_where_the_docs_are_and_uvicorn_lines_share_the_format(tmp_path, as_json):
    with Server(tmp_path, env={"CHARRNN_LOG_JSON": "true" if as_json else "false"}) as server:
        assert httpx.get(server.url + "/vocab").status_code == 200
    lines = [line for line in server.log().splitlines() if line.strip()]
    if as_json:
        entries = [json.loads(line) for line in lines]  # every line, uvicorn's included
        loggers = {e["logger"] for e in entries}
        text = "\n".join(e["message"] for e in entries)
    else:
        assert all(LINE.match(line) for line in lines), [line for line in lines if not LINE.match(line)]
        loggers = {line.split(" ")[3].rstrip(":") for line in lines}
        text = "\n".join(lines)
    assert {"uvicorn.error", "app", "app.service.models", "app.access"} <= loggers
    assert f"API docs at {server.url}/docs" in text
    assert "trained the default model 'default'" in text and "(device cpu)" in text
