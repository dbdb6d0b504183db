"""Invalid input gets a 4xx whose message names the field; never a 500."""

import pytest

BAD_COMPLETIONS = [
    ({}, "prefix"),
    ({"prefix": ""}, "prefix"),
    ({"prefix": 5}, "prefix"),
    ({"prefix": None}, "prefix"),
    ({"prefix": "a", "max_new_chars": -1}, "max_new_chars"),
    ({"prefix": "a", "max_new_chars": 10**9}, "max_new_chars"),
    ({"prefix": "a", "temperature": -0.5}, "temperature"),
    ({"prefix": "a", "temperature": "NaN"}, "temperature"),
    ({"prefix": "a", "top_k": -1}, "top_k"),
    ({"prefix": "a", "top_p": -0.1}, "top_p"),  # 0 is allowed: only the likeliest character
    ({"prefix": "a", "top_p": 1.5}, "top_p"),
    ({"prefix": "a", "seed": -3}, "seed"),
    ({"prefix": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prefix": "a", "stop": "x"}, "stop"),
    ({"prefix": "a", "n": 0}, "n"),
    ({"prefix": "a", "n": 17}, "n"),
    ({"prefix": "a", "temprature": 1}, "temprature"),
    ({"prefix": "a" * 100_001}, "prefix"),
    ({"prefix": "a", "stop": ["x" * 65]}, "stop"),
]


@pytest.mark.parametrize(("body", "field"), BAD_COMPLETIONS)
def test_bad_completion_requests_are_422_naming_the_field(client, body, field):
    r = client.post("/complete", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == field
    assert field in error["message"]


def test_malformed_json_is_422(client):
    r = client.post("/complete", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "invalid_request"


BAD_TRAINING = [
    ({"sentences": ["ab"]}, "name"),
    ({"name": "../etc", "sentences": ["ab"]}, "name"),
    ({"name": "x", "corpus": "abc", "sentences": ["ab"]}, "exactly one of corpus"),
    ({"name": "x"}, "exactly one of corpus"),
    ({"name": "x", "corpus": "a"}, "corpus"),
    ({"name": "x", "sentences": []}, "sentences"),
    ({"name": "x", "sentences": ["ab"], "cell": "transformer"}, "cell"),
    ({"name": "x", "sentences": ["ab"], "hidden_size": 0}, "hidden_size"),
    ({"name": "x", "sentences": ["ab"], "hidden_size": 100_000}, "hidden_size"),
    ({"name": "x", "sentences": ["ab"], "num_layers": 99}, "num_layers"),
    ({"name": "x", "sentences": ["ab"], "epochs": 0}, "epochs"),
    ({"name": "x", "sentences": ["ab"], "learning_rate": -0.5}, "learning_rate"),
    ({"name": "x", "sentences": ["ab"], "encoding": "bytes"}, "encoding"),
    ({"name": "x", "sentences": ["ab"], "dropout": 1.0}, "dropout"),
]


@pytest.mark.parametrize(("body", "field"), BAD_TRAINING)
def test_bad_training_requests_are_422_naming_the_field(client, body, field):
    r = client.post("/train", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


def test_unknown_job_is_404(client):
    r = client.get("/train/nope")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"


def test_unknown_route_uses_the_envelope(client):
    r = client.get("/nowhere")
    assert r.status_code == 404
    assert "error" in r.json()
