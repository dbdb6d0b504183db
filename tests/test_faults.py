"""Faults: broken checkpoints at startup, and a process killed while it writes one."""

import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from app.devserver import ROOT
from app.lm.model import ModelConfig
from app.lm.store import ModelStore
from app.lm.train import build_model
from app.lm.vocab import Vocab
from app.main import create_app
from tests.conftest import make_settings, serving, wait_for, wait_for_job


def saved(store: ModelStore, name: str, text: str = "hello world") -> None:
    vocab = Vocab.from_text(text)
    store.save(name, build_model(ModelConfig(vocab_size=vocab.size, hidden_size=8), seed=1), vocab)


def break_truncate(store, name):
    p = store.root / f"{name}.safetensors"
    p.write_bytes(p.read_bytes()[:40])


def break_metadata(store, name):
    (store.root / f"{name}.json").write_text("{not json")


def break_missing_weights(store, name):
    (store.root / f"{name}.safetensors").unlink()


def break_vocab(store, name):
    import json

    p = store.root / f"{name}.json"
    meta = json.loads(p.read_text())
    meta["vocab"]["chars"] = meta["vocab"]["chars"][:-2]  # no longer matches the output layer
    p.write_text(json.dumps(meta))


@pytest.mark.parametrize("breaker", [break_truncate, break_metadata, break_missing_weights, break_vocab])
def test_a_broken_active_model_falls_back_to_the_last_good_one(tmp_path, caplog, breaker):
    store = ModelStore(tmp_path)
    saved(store, "older")
    saved(store, "broken", "abcdef")
    store.set_active("broken")
    breaker(store, "broken")
    caplog.set_level(logging.INFO, logger="app")
    with serving(create_app(make_settings(tmp_path))) as c:
        assert c.get("/health").json()["model"] == "older"
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert c.post("/complete", json={"prefix": "he", "max_new_chars": 3}).status_code == 200
    assert models["older"]["ok"] and not models["broken"]["ok"]
    assert models["broken"]["error"]
    assert "model 'broken' cannot be loaded" in caplog.text
    assert "broken" in caplog.text and ("safetensors" in caplog.text or "json" in caplog.text)


def test_with_nothing_good_the_default_is_trained_again(tmp_path):
    store = ModelStore(tmp_path)
    saved(store, "default")
    store.set_active("default")
    break_truncate(store, "default")
    with serving(create_app(make_settings(tmp_path))) as c:
        r = c.post("/complete", json={"prefix": "good", "max_new_chars": 11})
        assert r.json()["choices"][0]["text"] == "good i am fine "


WRITER = textwrap.dedent(
    """
    import sys
    from app.lm.model import ModelConfig
    from app.lm.store import ModelStore
    from app.lm.train import build_model
    from app.lm.vocab import Vocab
    store = ModelStore(sys.argv[1])
    vocab = Vocab.from_text("abcdefghijklmnopqrstuvwxyz ")
    model = build_model(ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=1024, num_layers=2), seed=2)
    print("ready", flush=True)
    while True:
        store.save("m", model, vocab, training={"version": 2})
    """
)


def test_sigkill_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    store = ModelStore(tmp_path)
    saved(store, "m")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_for(lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), timeout=60, interval=0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    checkpoint = store.load("m")  # the old one or the new one, whole
    assert checkpoint.meta["training"] in ({}, {"version": 2})
    store.verify("m")


def test_old_temporaries_of_killed_writers_are_cleaned_at_startup(tmp_path):
    stale, fresh = tmp_path / ".m.safetensors.abc.tmp", tmp_path / ".m.json.def.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    with serving(create_app(make_settings(tmp_path))):
        pass
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a replica writing now


def test_a_full_disk_while_saving_fails_the_job_and_keeps_serving(fresh_client, monkeypatch):
    import errno

    from app.lm import store as store_module

    def no_space(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store_module, "_atomic_write", no_space)
    r = fresh_client.post("/train", json={"name": "nospace", "sentences": ["good night moon"], "epochs": 5})
    job = wait_for_job(fresh_client, r.json()["job_id"])
    assert job["status"] == "failed" and "No space left on device" in job["error"]
    assert fresh_client.get("/health").json()["model"] == "default"
    r = fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 11})
    assert r.json()["choices"][0]["text"] == "good i am fine "
    assert "nospace" not in {m["name"] for m in fresh_client.get("/models").json()["models"]}
