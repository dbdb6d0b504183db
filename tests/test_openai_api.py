"""The OpenAI-compatible API, driven by the official openai client against a live server."""

import openai
import pytest

from app.devserver import Server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("openai")) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_active_model(client):
    assert [m.id for m in client.models.list().data] == ["default"]


def test_completion_matches_the_tutorial(client):
    r = client.completions.create(model="default", prompt="good", max_tokens=11, temperature=0)
    assert r.object == "text_completion" and r.model == "default"
    assert r.choices[0].text == " i am fine "
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 11, 15)


def test_stop_n_and_seed(client):
    r = client.completions.create(model="default", prompt="good", max_tokens=30, temperature=0, stop=["am"])
    assert r.choices[0].text == " i " and r.choices[0].finish_reason == "stop"
    kw = dict(model="default", prompt="h", max_tokens=30, temperature=1.0, n=3, seed=5)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len(a.choices) == 3


def test_streaming(client):
    whole = client.completions.create(model="default", prompt="h", max_tokens=60, temperature=0.9, seed=3)
    chunks = list(
        client.completions.create(model="default", prompt="h", max_tokens=60, temperature=0.9, seed=3, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 60


def test_errors_come_back_as_api_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="good", max_tokens=5)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="default", prompt="good", max_tokens=5, temperature=9)
