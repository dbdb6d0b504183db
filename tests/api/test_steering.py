"""Per-character probabilities, echo, samplers, a model per request and regex-constrained completion."""

import math
import random
import re

import pytest

from app.lm.store import ModelStore
from app.lm.train import TrainConfig, train_on_text
from tests.conftest import wait_for_job


def test_logprobs_of_each_generated_character(client):
    r = client.post("/complete", json={"prefix": "good", "max_new_chars": 11, "logprobs": 3})
    [choice] = r.json()["choices"]
    assert choice["completion"] == " i am fine "
    lps = choice["logprobs"]
    assert [lp["char"] for lp in lps] == list(" i am fine ")
    for lp in lps:
        assert len(lp["top"]) == 3 and lp["top"][0]["char"] == lp["char"]  # greedy: the likeliest
        assert lp["top"][0]["logprob"] == pytest.approx(lp["logprob"])
        assert sum(math.exp(t["logprob"]) for t in lp["top"]) <= 1 + 1e-6
        assert all(t["char"] for t in lp["top"])  # UNK (no character) is never an alternative
    plain = client.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()["choices"][0]
    assert plain["logprobs"] is None  # off by default


def test_echo_scores_the_prefix_and_agrees_with_score(client):
    text = "have a nice day"
    r = client.post("/complete", json={"prefix": text, "max_new_chars": 0, "echo": True, "logprobs": 2})
    lps = r.json()["choices"][0]["logprobs"]
    assert lps[0] is None and [lp["char"] for lp in lps[1:]] == list(text[1:])
    score = client.post("/score", json={"text": text, "per_char": True, "top": 2}).json()
    assert sum(lp["logprob"] for lp in lps[1:]) == pytest.approx(-score["nats_per_char"] * score["chars_scored"])
    assert score["chars"][0] is None
    for a, b in zip(lps[1:], score["chars"][1:], strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5) and a["char"] == b["char"]
        assert [t["char"] for t in a["top"]] == [t["char"] for t in b["top"]]


def test_streamed_logprobs_concatenate_to_the_whole_answer(client):
    body = {"prefix": "h", "max_new_chars": 40, "temperature": 0.9, "seed": 11, "logprobs": 1, "stop": ["e "]}
    whole = client.post("/complete", json=body).json()["choices"][0]
    with client.stream("POST", "/complete", json={**body, "stream": True}) as r:
        from tests.sse import parse_events

        events = parse_events(r.iter_lines())
    text = "".join(c["text"] for e in events[:-1] for c in e["choices"])
    lps = [lp for e in events[:-1] for c in e["choices"] for lp in c.get("logprobs", [])]
    assert text == whole["completion"] and lps == whole["logprobs"]


def test_score_per_char_has_its_own_limit(tmp_path):
    from app.main import create_app
    from tests.conftest import make_settings, serving

    with serving(create_app(make_settings(tmp_path, max_score_chars_per_char=10))) as c:
        r = c.post("/score", json={"text": "good i am fine", "per_char": True})
        assert r.status_code == 422 and "per_char" in r.json()["error"]["message"]
        assert c.post("/score", json={"text": "good i am fine"}).status_code == 200


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("min_p", 1.5),
        ("repetition_penalty", -1),
        ("presence_penalty", 3),
        ("frequency_penalty", -3),
        ("logprobs", 21),
        ("repeat_last_n", -2),
    ],
)
def test_sampler_bounds_are_checked(client, option, bad):
    r = client.post("/complete", json={"prefix": "good", option: bad})
    assert r.status_code == 422 and r.json()["error"]["param"] == option


def test_defaults_leave_the_tutorial_completion_unchanged_and_options_combine(client):
    assert client.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()["choices"][0]["text"] == (
        "good i am fine "
    )
    body = {
        "prefix": "good",
        "max_new_chars": 30,
        "temperature": 0.8,
        "top_k": 5,
        "top_p": 0.9,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "repeat_last_n": 16,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.1,
        "logit_bias": {"w": -1.0},
        "seed": 3,
        "n": 2,
    }
    a, b = client.post("/complete", json=body).json(), client.post("/complete", json=body).json()
    assert a["choices"] == b["choices"] and len(a["choices"]) == 2


def test_logit_bias_steers_greedy_decoding_and_names_unknown_characters(client):
    r = client.post("/complete", json={"prefix": "good", "max_new_chars": 1, "logit_bias": {"y": 50.0}})
    assert r.json()["choices"][0]["completion"] == "y"
    r = client.post("/complete", json={"prefix": "good", "logit_bias": {"Q": 1.0, "§": 2.0}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "logit_bias"
    assert "'Q'" in r.json()["error"]["message"] and "'§'" in r.json()["error"]["message"]


# ---- a model per request ----------------------------------------------------------------------


def digits_text(n: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["yes", "no", "maybe", "Alice", "Bob Stone", "Carol"]
    parts = []
    for _ in range(n):
        parts.append(f"{rng.randint(1900, 2099)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
        parts.append(rng.choice(words))
    return " ".join(parts) + "\n"


@pytest.fixture(scope="module")
def digits_client(client, module_store):
    """The module's service with a second stored model, trained here on dates and words."""
    trained = train_on_text(
        corpus=digits_text(), cell="gru", hidden_size=32, config=TrainConfig(epochs=3, batch_size=8, seq_len=32)
    )
    ModelStore(module_store).save("digits", trained.model, trained.vocab)
    return client


def test_a_request_can_name_any_stored_model_and_the_active_one_stays_the_default(digits_client):
    c = digits_client
    r = c.post("/complete", json={"prefix": "19", "max_new_chars": 8, "model": "digits"})
    assert r.status_code == 200 and r.json()["model"] == "digits"
    assert c.get("/health").json()["model"] == "default"
    assert c.post("/complete", json={"prefix": "good", "max_new_chars": 11}).json()["model"] == "default"
    r = c.post("/score", json={"text": "2024-01-15", "model": "digits"})
    assert r.json()["model"] == "digits"
    r = c.post("/complete", json={"prefix": "a", "model": "nosuch"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
    assert ids == {"default", "digits"}
    r = c.post("/v1/completions", json={"model": "digits", "prompt": "20", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["model"] == "digits"


@pytest.mark.parametrize(
    "pattern",
    [r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r"(yes|no|maybe)", r"[A-Z][a-z]+( [A-Z][a-z]+)?"],
)
def test_regex_completions_always_match_even_at_high_temperature(digits_client, pattern):
    body = {"prefix": " ", "max_new_chars": 40, "regex": pattern, "temperature": 3.0, "n": 8, "seed": 1}
    r = digits_client.post("/complete", json={**body, "model": "digits"})
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert re.fullmatch(pattern, choice["completion"]), choice
        assert choice["finish_reason"] == "stop"
    r = digits_client.post(
        "/v1/completions", json={"model": "digits", "prompt": " ", "max_tokens": 40, "regex": pattern}
    )
    assert re.fullmatch(pattern, r.json()["choices"][0]["text"])


def test_regex_that_cannot_finish_in_time_says_length(digits_client):
    r = digits_client.post(
        "/complete", json={"prefix": " ", "max_new_chars": 3, "regex": "[0-9]{6}", "model": "digits"}
    )
    [choice] = r.json()["choices"]
    assert choice["finish_reason"] == "length" and re.fullmatch("[0-9]{3}", choice["completion"])


@pytest.mark.parametrize(
    ("pattern", "words"),
    [("(unclosed", "regex"), ("[é]+", "regex"), ("a" * 5000, "regex")],
)
def test_bad_patterns_are_a_422_naming_regex(digits_client, pattern, words):
    r = digits_client.post("/complete", json={"prefix": " ", "regex": pattern, "model": "digits"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "regex", r.text


def test_a_finished_job_does_not_take_over_unless_asked(fresh_client):
    r = fresh_client.post("/train", json={"name": "poem", "sentences": ["the rain in spain"], "epochs": 20})
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
    assert fresh_client.get("/health").json()["model"] == "default"
    r = fresh_client.post("/complete", json={"prefix": "good", "max_new_chars": 11})
    assert r.json()["choices"][0]["text"] == "good i am fine "
    assert fresh_client.post("/complete", json={"prefix": "the", "model": "poem"}).json()["model"] == "poem"
    r = fresh_client.post(
        "/train", json={"name": "poem2", "sentences": ["the rain in spain"], "epochs": 5, "activate": True}
    )
    assert wait_for_job(fresh_client, r.json()["job_id"])["status"] == "succeeded"
    assert fresh_client.get("/health").json()["model"] == "poem2"


def test_loaded_models_are_bounded_and_least_recently_used_leave(tmp_path):
    from app.main import create_app
    from tests.conftest import make_settings, serving

    with serving(create_app(make_settings(tmp_path, max_loaded_models=1))) as c:
        store = ModelStore(tmp_path)
        for name, seed in (("m1", 1), ("m2", 2)):
            t = train_on_text(corpus="abcabc abc " * 20, hidden_size=8, config=TrainConfig(epochs=1, seed=seed))
            store.save(name, t.model, t.vocab)
        models = c.app.state.service.models
        for name in ("m1", "m2", "m1"):
            assert c.post("/complete", json={"prefix": "a", "max_new_chars": 2, "model": name}).status_code == 200
        assert list(models._loaded) == ["m1"]  # m2 left when m1 came back
        metrics = c.get("/metrics").text
        assert 'charrnn_model_loads_total{outcome="load"} 3.0' in metrics
