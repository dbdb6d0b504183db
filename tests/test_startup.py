"""Startup: train-or-load, restarts that reuse the checkpoint, and device selection."""

import logging
import subprocess
import sys

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import StartupError, create_app
from tests.conftest import make_settings, wait_for_job
from tests.server import ROOT, Server


def test_first_start_trains_and_saves_then_a_restart_loads_without_training(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="app")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        first = c.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()
    assert "trained the default model" in caplog.text
    weights = tmp_path / "default.safetensors"
    stamp = weights.stat().st_mtime_ns
    caplog.clear()
    with TestClient(create_app(make_settings(tmp_path))) as c:
        again = c.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()
    assert "loaded active model 'default'" in caplog.text
    assert "trained" not in caplog.text
    assert weights.stat().st_mtime_ns == stamp
    assert again["choices"] == first["choices"]


def test_a_trained_active_model_survives_a_restart(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.post("/train", json={"name": "mine", "sentences": ["good night moon"], "epochs": 120})
        assert wait_for_job(c, r.json()["job_id"])["status"] == "succeeded"
        before = c.post("/complete", json={"prefix": "good", "max_new_chars": 11, "temperature": 0.8, "seed": 3})
    with TestClient(create_app(make_settings(tmp_path))) as c:
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
