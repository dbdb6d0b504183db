import json

import pytest
import torch

from app.lm.generate import SamplingParams, generate
from app.lm.model import ModelConfig
from app.lm.store import CorruptCheckpoint, InvalidModelName, ModelNotFound, ModelStore
from app.lm.train import build_model
from app.lm.vocab import Vocab


def small_model(cell="gru"):
    vocab = Vocab.from_text("hello world")
    return build_model(ModelConfig(vocab_size=vocab.size, cell=cell, hidden_size=8, encoding="embedding"), 3), vocab


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_round_trip_gives_identical_outputs(tmp_path, cell):
    store = ModelStore(tmp_path)
    model, vocab = small_model(cell)
    store.save("m1", model, vocab, training={"epochs": 3}, metrics={"final_loss": 1.5})
    loaded = store.load("m1")
    assert loaded.vocab == vocab
    assert loaded.meta["training"] == {"epochs": 3}
    assert loaded.meta["metrics"]["final_loss"] == 1.5
    params = SamplingParams(max_new_chars=20, temperature=0.9)
    assert [s.text for s in generate(model, vocab, "he", params, seed=5)] == [
        s.text for s in generate(loaded.model, loaded.vocab, "he", params, seed=5)
    ]


def test_files_are_safetensors_and_json_without_pickle(tmp_path):
    store = ModelStore(tmp_path)
    model, vocab = small_model()
    store.save("m1", model, vocab)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["m1.json", "m1.safetensors"]
    meta = json.loads((tmp_path / "m1.json").read_text())
    for key in ("format_version", "model_config", "vocab", "training", "metrics", "created_at", "weights_sha256"):
        assert key in meta
    assert b"\x80\x04" not in (tmp_path / "m1.safetensors").read_bytes()[:2]  # not a pickle protocol header


def test_active_pointer(tmp_path):
    store = ModelStore(tmp_path)
    assert store.active_name() is None
    model, vocab = small_model()
    store.save("a", model, vocab)
    store.set_active("a")
    assert store.active_name() == "a"
    with pytest.raises(ModelNotFound):
        store.set_active("missing")


def test_a_weights_file_that_does_not_match_its_metadata_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    model, vocab = small_model()
    store.save("m", model, vocab)
    path = tmp_path / "m.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpoint, match="do not match"):
        store.load("m")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "a..b", "x" * 65, "a\\b", "é"])
def test_names_that_could_escape_the_store_are_refused(tmp_path, name):
    store = ModelStore(tmp_path)
    model, vocab = small_model()
    with pytest.raises(InvalidModelName):
        store.save(name, model, vocab)


def test_loads_onto_the_requested_device(tmp_path):
    store = ModelStore(tmp_path)
    model, vocab = small_model()
    store.save("m", model, vocab)
    assert store.load("m", torch.device("cpu")).model.fc.weight.device.type == "cpu"


def test_load_verifies_and_loads_the_same_bytes_read_once(tmp_path, monkeypatch):
    """A replica replacing the weights between the hash check and the load cannot slip them in:
    the file is read once, and the checked bytes are the ones loaded."""
    from pathlib import Path

    from app.lm.model import ModelConfig
    from app.lm.train import build_model
    from app.lm.vocab import Vocab

    vocab = Vocab.from_text("hello world")
    store = ModelStore(tmp_path)
    original = build_model(ModelConfig(vocab_size=vocab.size, hidden_size=8), seed=1)
    store.save("m", original, vocab)
    other = ModelStore(tmp_path / "other")
    other.save("m", build_model(ModelConfig(vocab_size=vocab.size, hidden_size=8), seed=2), vocab)
    swapped_in = (tmp_path / "other" / "m.safetensors").read_bytes()
    weights = tmp_path / "m.safetensors"
    reads = []
    real_read_bytes = Path.read_bytes

    def read_then_swap(self):
        payload = real_read_bytes(self)
        if self == weights:
            reads.append(self)
            weights.write_bytes(swapped_in)  # another process replaces the file right after the read
        return payload

    monkeypatch.setattr(Path, "read_bytes", read_then_swap)
    loaded = store.load("m")
    assert len(reads) == 1
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
