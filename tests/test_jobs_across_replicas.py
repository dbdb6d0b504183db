"""Training jobs behind a balancer: start on one replica, follow and cancel through another; one job at a time."""

import json
import time

import httpx
import pytest

from app.devserver import Server
from app.service.job_board import JobBoard
from tests.conftest import wait_for
from tests.sse import parse_events

pytestmark = pytest.mark.server
CORPUS = "the quick brown fox jumps over the lazy dog. " * 400
LONG = {"name": "long", "corpus": CORPUS, "max_seconds": 120, "epochs": 100_000, "hidden_size": 32, "eval_interval": 20}


def test_a_job_started_on_one_replica_is_followed_and_cancelled_through_another(tmp_path):
    with Server(tmp_path) as a, Server(tmp_path) as b:
        r = httpx.post(a.url + "/train", json=LONG)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        seen = wait_for(lambda: (s := httpx.get(f"{b.url}/train/{job_id}").json()).get("step", 0) > 0 and s)
        assert seen["status"] == "running" and seen["name"] == "long"
        r = httpx.post(b.url + "/train", json={**LONG, "name": "second"})  # one job across the replicas
        assert r.status_code == 409 and job_id in r.json()["error"]["message"]
        with httpx.stream("GET", f"{b.url}/train/{job_id}/events", timeout=30) as events:
            lines = events.iter_lines()
            first = parse_events([next(line for line in lines if line.startswith("data:"))])[0]
            assert first["job_id"] == job_id
            cancelled = httpx.post(f"{b.url}/train/{job_id}/cancel")
            assert cancelled.status_code == 200
            rest = parse_events(lines)
        assert rest[-1] == "[DONE]" and rest[-2]["status"] == "cancelled"
        assert httpx.get(f"{a.url}/train/{job_id}").json()["status"] == "cancelled"
        assert httpx.post(b.url + "/train", json={**LONG, "name": "next", "max_seconds": 1}).status_code == 202


def test_a_lease_whose_holder_died_is_taken_over(tmp_path):
    board = JobBoard(tmp_path, lease_seconds=15)
    board.dir.mkdir(parents=True)
    stale = {"job_id": "f" * 32, "owner": "gone:1", "renewed": time.time() - 60}
    (board.dir / ".running").write_text(json.dumps(stale))
    board.acquire("a" * 32)  # the dead holder's lease is broken
    assert json.loads((board.dir / ".running").read_text())["job_id"] == "a" * 32
    other = JobBoard(tmp_path, lease_seconds=15)
    other.owner = "elsewhere:2"
    with pytest.raises(Exception, match="still running"):  # a live lease is not
        other.acquire("b" * 32)
    other.release("a" * 32)  # only its holder releases it
    assert (board.dir / ".running").exists()
    board.release("a" * 32)
    assert not (board.dir / ".running").exists()
