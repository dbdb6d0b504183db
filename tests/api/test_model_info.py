"""GET /models is a short summary, GET /models/{name} the detail; neither publishes training text
nor names a path on the server."""

import json

from app.lm.store import ModelStore
from tests.conftest import wait_for_job

SECRET = ["my private diary entry", "another secret line"]


def test_models_summary_and_detail_never_show_the_training_text(fresh_client):
    r = fresh_client.post("/train", json={"name": "diary", "sentences": SECRET, "epochs": 5, "activate": False})
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
    listing = fresh_client.get("/models")
    [summary] = [m for m in listing.json()["models"] if m["name"] == "diary"]
    assert set(summary) == {
        "name", "active", "ok", "error", "cell", "hidden_size", "num_layers", "num_parameters", "val_bpc", "created_at"
    }  # fmt: skip
    detail = fresh_client.get("/models/diary").json()
    assert detail["training"]["sentences_count"] == 2 and len(detail["training"]["text_sha256"]) == 64
    assert detail["training"]["epochs"] == 5
    activated = fresh_client.post("/models/diary/activate")
    for body in (listing.text, json.dumps(detail), activated.text):
        assert "private diary" not in body and "secret line" not in body


def test_checkpoints_written_with_their_sentences_are_filtered_on_read(fresh_client, tmp_path):
    store = ModelStore(tmp_path)
    meta_path = tmp_path / "default.json"
    meta = json.loads(meta_path.read_text())
    meta["training"] = {"sentences": SECRET, "epochs": 100}  # as older versions wrote it
    meta_path.write_text(json.dumps(meta))
    detail = fresh_client.get("/models/default").json()
    assert "sentences" not in detail["training"] and detail["training"]["sentences_count"] == 2
    assert "private diary" not in fresh_client.get("/models").text + json.dumps(detail)
    assert store.read_meta("default")["training"]["sentences"] == SECRET  # the file itself is left alone


def test_no_error_message_names_a_path_on_the_server(fresh_client, tmp_path):
    store_dir = str(tmp_path)
    r = fresh_client.get("/models/nosuch")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no model named 'nosuch'"
    for method, path in [("POST", "/models/nosuch/activate"), ("DELETE", "/models/nosuch")]:
        assert store_dir not in fresh_client.request(method, path).text
    r = fresh_client.post("/score", json={"text": "good", "model": "nosuch"})
    assert r.status_code == 404 and store_dir not in r.text
    r = fresh_client.post("/train", json={"name": "x", "sentences": ["ab"], "resume_from": "nosuch"})
    assert r.status_code == 404 and store_dir not in r.text
    (tmp_path / "broken.json").write_text("{not json")
    r = fresh_client.post("/models/broken/activate")
    assert r.status_code == 409 and "broken.json" in r.text and store_dir not in r.text
    [broken] = [m for m in fresh_client.get("/models").json()["models"] if m["name"] == "broken"]
    assert not broken["ok"] and store_dir not in broken["error"]
    assert store_dir not in fresh_client.get("/models/broken").text
