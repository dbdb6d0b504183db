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


def test_echo_with_zero_tokens_scores_the_prompt_like_score(client):
    """What lm-evaluation-harness sends: echo, max_tokens 0, logprobs. The sum of token_logprobs
    is minus /score's total nats for the same text and model."""
    import httpx

    text = "hey how are you, good i am fine"
    r = client.completions.create(model="default", prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and lp.tokens == list(text)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == list(range(len(text)))
    assert all(len(t) == 1 for t in lp.top_logprobs[1:])
    score = httpx.post(str(client.base_url).replace("/v1/", "/score"), json={"text": text, "model": "default"}).json()
    total = -score["nats_per_char"] * score["chars_scored"]
    assert sum(lp.token_logprobs[1:]) == pytest.approx(total, abs=1e-4 * len(text))


def test_logprobs_of_generated_characters_and_a_prompt_list(client):
    r = client.completions.create(model="default", prompt=["good", "hey"], max_tokens=6, temperature=0, logprobs=3, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [" i am ", " i am ", " how a", " how a"]
    lp = r.choices[2].logprobs
    assert lp.tokens == list(" how a") and lp.text_offset == list(range(3, 9))
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and max(top.values()) == pytest.approx(value)  # greedy: the likeliest
        assert token in top and sum(2.718281828**v for v in top.values()) <= 1.0 + 1e-6


def test_streamed_logprobs_and_usage_chunk(client):
    kw = dict(model="default", prompt="h", max_tokens=30, temperature=0.9, seed=4, logprobs=2)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    values = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert text == whole.choices[0].text and tokens == whole.choices[0].logprobs.tokens
    assert values == pytest.approx(whole.choices[0].logprobs.token_logprobs)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30


def test_unsupported_openai_parameters_are_named(client):
    with pytest.raises(openai.UnprocessableEntityError, match="best_of"):
        client.completions.create(model="default", prompt="good", max_tokens=5, best_of=3)
    with pytest.raises(openai.UnprocessableEntityError, match="suffix"):
        client.completions.create(model="default", prompt="good", max_tokens=5, suffix="!")
    r = client.completions.create(model="default", prompt="good", max_tokens=3, temperature=0, user="someone")
    assert r.choices[0].text == " i "
