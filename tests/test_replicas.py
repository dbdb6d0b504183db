"""Replicas on one model_store follow each other's activations without failing a request."""

import threading

import httpx
import pytest

from app.devserver import Server
from tests.conftest import wait_for

pytestmark = pytest.mark.server


def test_a_model_activated_on_one_replica_is_served_by_the_other(tmp_path):
    env = {"CHARRNN_ACTIVE_POLL_SECONDS": "0.3"}
    with Server(tmp_path, env=env) as a, Server(tmp_path, env=env) as b:
        failures, answers = [], []
        stop = threading.Event()

        def hammer():
            with httpx.Client(base_url=b.url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/complete", json={"prefix": "good", "max_new_chars": 11})
                    (answers if r.status_code == 200 else failures).append(r)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            body = {"name": "night", "sentences": ["good night moon"], "activate": True}
            job = httpx.post(a.url + "/train", json=body).json()
            wait_for(lambda: httpx.get(f"{a.url}/train/{job['job_id']}").json()["status"] == "succeeded")
            wait_for(lambda: httpx.get(b.url + "/health").json()["model"] == "night", timeout=10)
            wait_for(lambda: answers and answers[-1].json()["model"] == "night", timeout=10)
        finally:
            stop.set()
            worker.join()
    assert not failures
    texts = {r.json()["model"]: r.json()["choices"][0]["text"] for r in answers}
    assert texts["default"] == "good i am fine "
    assert texts["night"].startswith("good night moon")
    assert "switched to model 'night'" in b.log()
