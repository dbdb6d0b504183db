"""Training jobs over HTTP on real corpora: progress, validation, cancel, resume, uploads, models, scoring."""

import math

import pytest

from app.main import create_app
from tests.conftest import make_settings, serving, wait_for, wait_for_job
from tests.sse import parse_events

CORPUS = "the cat sat on the mat and the dog sat on the log. " * 80
SMALL = {"hidden_size": 32, "batch_size": 4, "seq_len": 32, "epochs": 4, "eval_interval": 10, "precision": "fp32"}


def test_corpus_job_reports_validation_progress_and_saves_its_metrics(fresh_client):
    r = fresh_client.post("/train", json={"name": "cats", "corpus": CORPUS, **SMALL})
    assert r.status_code == 202
    job = wait_for_job(fresh_client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["history"] and job["step"] == job["total_steps"]
    first, last = job["history"][0], job["history"][-1]
    assert last["val_loss"] < first["val_loss"]
    assert last["val_bpc"] == pytest.approx(last["val_loss"] / math.log(2))
    assert job["best_val_loss"] == min(h["val_loss"] for h in job["history"])
    assert job["chars_per_s"] > 0 and job["elapsed"] > 0 and job["eta"] == 0
    model = fresh_client.get("/models/cats").json()
    assert model["metrics"]["best_val_loss"] == pytest.approx(job["best_val_loss"])
    assert model["training"]["val_fraction"] == 0.1 and model["training"]["seq_len"] == 32  # 0.1: a small text
    assert model["model_config"]["cell"] == "lstm"  # the recommended corpus default
    assert model["training"]["size_class"] == "small" and job["settings"]["size_class"] == "small"
    assert job["stopped"] == "epochs" and model["metrics"]["stopped"] == "epochs"  # the reason it ended, truly


def test_progress_stream_ends_with_done(fresh_client):
    r = fresh_client.post("/train", json={"name": "streamed", "corpus": CORPUS, **SMALL})
    with fresh_client.stream("GET", f"/train/{r.json()['job_id']}/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        payloads = parse_events(events.iter_lines())
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["status"] == "succeeded"
    steps = [p["step"] for p in payloads[:-1]]
    assert steps == sorted(steps)


def test_cancel_stops_within_a_second_and_saves_nothing(fresh_client):
    body = {"name": "long", "corpus": CORPUS * 20, "max_seconds": 600, "epochs": 1000, "hidden_size": 64}
    job_id = fresh_client.post("/train", json=body).json()["job_id"]
    wait_for(lambda: fresh_client.get(f"/train/{job_id}").json()["step"] > 0)
    r = fresh_client.post(f"/train/{job_id}/cancel")
    assert r.status_code == 200
    job = wait_for_job(fresh_client, job_id, timeout=1.5)
    assert job["status"] == "cancelled"
    assert "long" not in {m["name"] for m in fresh_client.get("/models").json()["models"]}
    store = fresh_client.app.state.service.store.root
    assert not list(store.glob("long*"))


def test_resume_from_continues_training(fresh_client):
    r = fresh_client.post("/train", json={"name": "base", "corpus": CORPUS, **SMALL})
    base = wait_for_job(fresh_client, r.json()["job_id"])
    r = fresh_client.post("/train", json={"name": "more", "corpus": CORPUS, "resume_from": "base", **SMALL})
    more = wait_for_job(fresh_client, r.json()["job_id"])
    assert more["status"] == "succeeded", more
    assert more["history"][0]["step"] > base["step"]
    info = {name: fresh_client.get(f"/models/{name}").json() for name in ("base", "more")}
    assert info["more"]["training"]["resumed_from"] == "base"
    assert info["more"]["model_config"] == info["base"]["model_config"]
    r = fresh_client.post("/train", json={"name": "x", "corpus": CORPUS, "resume_from": "nothing"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "resume_from"


def test_activate_and_delete_models(fresh_client):
    r = fresh_client.post("/train", json={"name": "other", "sentences": ["good night"], "activate": False})
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
    assert fresh_client.delete("/models/default").status_code == 409
    r = fresh_client.post("/models/other/activate")
    assert r.status_code == 200 and r.json()["active"] == "other"
    assert fresh_client.get("/health").json()["model"] == "other"
    assert fresh_client.delete("/models/default").status_code == 204
    assert [m["name"] for m in fresh_client.get("/models").json()["models"]] == ["other"]
    assert fresh_client.delete("/models/default").status_code == 404
    assert fresh_client.post("/models/missing/activate").status_code == 404
    assert fresh_client.post("/models/..%2Fetc/activate").status_code in (404, 422)


def test_score_reports_loss_bits_and_perplexity(client):
    seen = client.post("/score", json={"text": "good i am fine "}).json()
    unseen = client.post("/score", json={"text": "zzqq xx yy zzqq"}).json()
    assert seen["model"] == "default" and seen["chars_scored"] == 14
    assert seen["bits_per_char"] == pytest.approx(seen["nats_per_char"] / math.log(2))
    assert seen["perplexity"] == pytest.approx(math.exp(seen["nats_per_char"]))
    assert seen["nats_per_char"] < 1.0 < unseen["nats_per_char"]
    assert unseen["unknown_chars"] == 10 and seen["unknown_chars"] == 0
    assert client.post("/score", json={"text": "ab", "model": "missing"}).status_code == 404
    assert client.post("/score", json={"text": "a"}).status_code == 422


def test_upload_a_corpus_and_train_on_it(fresh_client):
    r = fresh_client.post("/corpora", content=CORPUS.encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 201
    info = r.json()
    assert info["chars"] == len(CORPUS) and info["bytes"] == len(CORPUS.encode())
    assert fresh_client.get("/corpora").json()["corpora"][0]["corpus_id"] == info["corpus_id"]
    r = fresh_client.post("/train", json={"name": "uploaded", "corpus_id": info["corpus_id"], **SMALL})
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
    r = fresh_client.post("/train", json={"name": "nope", "corpus_id": "0" * 32})
    assert r.status_code == 404 and r.json()["error"]["param"] == "corpus_id"
    tiny = fresh_client.post("/corpora", content=b"abc de").json()["corpus_id"]
    r = fresh_client.post("/train", json={"name": "tiny", "corpus_id": tiny, "max_steps": 3})
    job = wait_for_job(fresh_client, r.json()["job_id"])  # a short text is read as fewer streams
    assert job["status"] == "succeeded", job


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"caf\xe9 au lait", 422, "not valid UTF-8"),
        (b"ok then \xe2\x82", 422, "ends inside a character"),
        (b"", 422, "empty"),
        (b"   \n\t  ", 422, "empty"),
        (b"x" * 2000, 413, "larger than the limit"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(tmp_path, body, status, words):
    with serving(create_app(make_settings(tmp_path, max_corpus_bytes=1000))) as c:
        r = c.post("/corpora", content=body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]["message"]
        assert c.get("/corpora").json()["corpora"] == []
    assert not list((tmp_path / "corpora").glob("*"))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "w", "corpus": "   \n  "}, "empty or only whitespace"),
        ({"name": "w", "corpus": "ab", "batch_size": 4}, "at least 3 characters are needed"),
    ],
)
def test_unusable_corpora_are_4xx_or_a_failed_job_that_says_why(fresh_client, body, words):
    r = fresh_client.post("/train", json=body)
    if r.status_code == 202:
        job = wait_for_job(fresh_client, r.json()["job_id"])
        assert job["status"] == "failed" and words in job["error"]
    else:
        assert r.status_code == 422 and words in r.json()["error"]["message"]
    assert fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 11}).status_code == 200
