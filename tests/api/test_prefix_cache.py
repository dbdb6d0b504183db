"""The prefix cache: a long prefix sent again resumes from its kept state, with the same answer."""

import random

import pytest

from app.main import create_app
from tests.conftest import make_settings, serving

TEXT = "".join(random.Random(0).choice("hey how are you good i am fine have a nice day ") for _ in range(3000))


def metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def cached(tmp_path):
    with serving(create_app(make_settings(tmp_path, api_key="user-a", admin_api_key="admin-b"))) as c:
        yield c


def ask(client, prefix: str, key: str, **extra) -> dict:
    body = {"prefix": prefix, "max_new_chars": 40, "logprobs": 2, **extra}
    r = client.post("/complete", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_a_repeated_long_prefix_is_read_once_and_answers_the_same(cached):
    first = ask(cached, TEXT, "user-a")
    assert metric(cached, "charrnn_prefix_cache_misses") == 1 and metric(cached, "charrnn_prefix_cache_bytes") > 0
    again = ask(cached, TEXT, "user-a")
    assert metric(cached, "charrnn_prefix_cache_hits") == 1
    assert again["completion"] == first["completion"]
    for a, b in zip(again["logprobs"], first["logprobs"], strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
    grown = ask(cached, TEXT + " good i am", "user-a")  # a history that grew: resumes from the kept start
    assert metric(cached, "charrnn_prefix_cache_hits") == 2
    echoed = ask(cached, TEXT, "user-a", echo=True, max_new_chars=0)  # echo still gets the prefix's own
    assert len(echoed["logprobs"]) == len(TEXT) and echoed["logprobs"][0] is None
    assert grown["completion"]


def test_tenants_do_not_share_kept_states(cached):
    ask(cached, TEXT, "user-a")
    ask(cached, TEXT, "admin-b")
    assert metric(cached, "charrnn_prefix_cache_hits") == 0 and metric(cached, "charrnn_prefix_cache_misses") == 2


def test_the_cache_can_be_turned_off_and_gives_the_same_text(tmp_path):
    with serving(create_app(make_settings(tmp_path, prefix_cache_bytes=0))) as c:
        off = c.post("/complete", json={"prefix": TEXT, "max_new_chars": 40}).json()["choices"][0]["completion"]
        assert metric(c, "charrnn_prefix_cache_bytes") == 0
    with serving(create_app(make_settings(tmp_path))) as c:
        for _ in range(2):
            on = c.post("/complete", json={"prefix": TEXT, "max_new_chars": 40}).json()["choices"][0]["completion"]
            assert on == off
        assert metric(c, "charrnn_prefix_cache_hits") == 1


def test_a_model_swap_drops_the_kept_states(cached):
    ask(cached, TEXT, "user-a")
    assert metric(cached, "charrnn_prefix_cache_bytes") > 0
    r = cached.post("/models/default/activate", headers={"Authorization": "Bearer admin-b"})
    assert r.status_code == 200
    assert metric(cached, "charrnn_prefix_cache_bytes") == 0
