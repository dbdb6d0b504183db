import pytest


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("good", "good i am fine "), ("hey", "hey how are you"), ("have", "have a nice day")],
)
def test_default_model_completes_the_tutorial_sentences(client, prefix, expected):
    r = client.post("/complete", json={"prefix": prefix, "max_new_chars": 15 - len(prefix)})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "default"
    choice = body["choices"][0]
    assert choice["text"] == expected
    assert choice["completion"] == expected[len(prefix) :]
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prefix_chars": len(prefix), "completion_chars": 15 - len(prefix)}
    assert body["unknown_chars"] == []


def test_the_issue_example(client):
    r = client.post("/complete", json={"prefix": "good", "max_new_chars": 11})
    assert r.json()["choices"][0]["text"] == "good i am fine "


@pytest.mark.parametrize(("prefix", "unknown"), [("göod", ["ö"]), ("😀hey", ["😀"]), ("GOOD!", ["G", "O", "D", "!"])])
def test_unseen_characters_are_read_as_unk(client, prefix, unknown):
    r = client.post("/complete", json={"prefix": prefix, "max_new_chars": 11})
    assert r.status_code == 200
    body = r.json()
    assert body["unknown_chars"] == unknown
    assert body["choices"][0]["text"].startswith(prefix)
    assert len(body["choices"][0]["completion"]) == 11


def test_same_seed_same_output(client):
    req = {"prefix": "h", "max_new_chars": 40, "temperature": 1.2, "top_k": 6, "top_p": 0.95, "seed": 99, "n": 3}
    a, b = client.post("/complete", json=req).json(), client.post("/complete", json=req).json()
    assert a["choices"] == b["choices"]
    assert a["seed"] == 99


def test_seed_is_reported_when_drawn(client):
    req = {"prefix": "h", "max_new_chars": 30, "temperature": 1.0}
    first = client.post("/complete", json=req).json()
    again = client.post("/complete", json={**req, "seed": first["seed"]}).json()
    assert again["choices"] == first["choices"]


def test_stop_string_ends_the_completion_and_is_left_out(client):
    r = client.post("/complete", json={"prefix": "good", "max_new_chars": 50, "stop": ["am", "zzz"]})
    choice = r.json()["choices"][0]
    assert choice["text"] == "good i "
    assert choice["finish_reason"] == "stop"


def test_n_completions(client):
    r = client.post("/complete", json={"prefix": "h", "max_new_chars": 20, "temperature": 1.0, "n": 5, "seed": 1})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3, 4]
    assert body["usage"]["completion_chars"] == sum(len(c["completion"]) for c in body["choices"])
