"""SIGTERM drains: requests in flight finish, a running training job stops cleanly, the process exits."""

import signal
import threading

import httpx
import pytest

from app.devserver import Server
from tests.conftest import wait_for

pytestmark = pytest.mark.server


def test_sigterm_lets_requests_in_flight_finish_and_stops_training(tmp_path):
    server = Server(tmp_path, env={"CHARRNN_MAX_NEW_CHARS": "1000000"}).start()
    try:
        corpus = "words to learn from, again and again. " * 400
        job = httpx.post(server.url + "/train", json={"name": "long", "corpus": corpus, "max_seconds": 600}).json()
        wait_for(lambda: httpx.get(f"{server.url}/train/{job['job_id']}").json()["step"] > 0)
        result = {}

        def long_request():
            body = {"prefix": "good", "max_new_chars": 1_000_000, "temperature": 1.0}  # ~1 s
            result["response"] = httpx.post(server.url + "/complete", json=body, timeout=120)

        worker = threading.Thread(target=long_request)
        worker.start()
        wait_for(lambda: "charrnn_batch_size 1.0" in httpx.get(server.url + "/metrics").text)
        server.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    response = result["response"]
    assert response.status_code == 200
    assert response.json()["usage"]["completion_chars"] == 1_000_000  # finished, not cut off
    assert not list(tmp_path.glob("long*"))  # the training job stopped and saved nothing
    log = server.log()
    assert "Application shutdown complete" in log
    assert f"training job {job['job_id']} cancelled" in log
