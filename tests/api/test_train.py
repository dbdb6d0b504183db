import threading

from tests.conftest import wait_for, wait_for_job

GREETINGS = {
    "name": "swapped",
    "sentences": ["good evening sir", "hey you"],
    "epochs": 150,
    "seed": 1,
    "activate": True,
}


def test_a_training_job_changes_what_complete_returns(fresh_client):
    before = fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 12}).json()
    assert before["choices"][0]["text"].startswith("good i am fine ")
    r = fresh_client.post("/train", json=GREETINGS)
    assert r.status_code == 202
    job = wait_for_job(fresh_client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["epoch"] == job["epochs"] == 150
    assert job["loss"] < 0.5
    after = fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 12}).json()
    assert after["model"] == "swapped"
    assert after["choices"][0]["text"] == "good evening sir"
    models = fresh_client.get("/models").json()
    assert models["active"] == "swapped"
    assert {m["name"] for m in models["models"]} == {"default", "swapped"}


def test_activate_false_keeps_the_current_model(fresh_client):
    r = fresh_client.post("/train", json={**GREETINGS, "name": "quiet", "activate": False, "epochs": 5})
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
    assert fresh_client.get("/health").json()["model"] == "default"


def test_a_second_job_while_one_runs_is_409_and_completions_keep_answering(fresh_client):
    long_job = {"name": "long", "corpus": "some text to learn from. " * 200, "epochs": 100_000, "hidden_size": 64}
    first = fresh_client.post("/train", json=long_job)
    assert first.status_code == 202
    job_id = first.json()["job_id"]
    try:
        second = fresh_client.post("/train", json={**GREETINGS, "name": "other"})
        assert second.status_code == 409
        assert second.json()["error"]["type"] == "conflict"
        r = fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 11})
        assert r.json()["choices"][0]["text"] == "good i am fine "
        assert fresh_client.get(f"/train/{job_id}").json()["status"] in ("queued", "running")
    finally:
        fresh_client.app.state.service.jobs.get(job_id).cancel.set()
    assert wait_for_job(fresh_client, job_id)["status"] == "cancelled"


def test_an_existing_name_is_409_unless_overwrite(fresh_client):
    r = fresh_client.post("/train", json={**GREETINGS, "name": "default"})
    assert r.status_code == 409
    assert r.json()["error"]["param"] == "name"
    r = fresh_client.post("/train", json={**GREETINGS, "name": "default", "overwrite": True, "epochs": 3})
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"


def test_no_request_sees_a_half_swapped_model(fresh_client):
    """Completions racing a swap each answer wholly from one model, named in the response."""
    expected = {"default": "good i am fine ", "swapped": "good evening si"}
    seen, errors = [], []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            body = fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()
            try:
                assert body["choices"][0]["text"] == expected[body["model"]]
                seen.append(body["model"])
            except (AssertionError, KeyError) as exc:
                errors.append((exc, body))

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        r = fresh_client.post("/train", json=GREETINGS)
        assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
        wait_for(lambda: "swapped" in seen[-3:] or errors)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors
    assert "default" in seen and "swapped" in seen
