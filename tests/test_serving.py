"""The real HTTP server: concurrency, seeds, disconnects and back-pressure."""

import asyncio
import re

import httpx
import pytest

from app.devserver import Server
from tests.conftest import wait_for
from tests.sse import parse_events

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("serving")
    with Server(store, env={"CHARRNN_MAX_NEW_CHARS": "1000000"}) as s:
        yield s


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_a_seed_gives_the_same_text_alone_or_among_63_concurrent_requests(server):
    probe = {"prefix": "h", "max_new_chars": 200, "temperature": 1.3, "top_p": 0.95, "seed": 2024}
    alone = httpx.post(server.url + "/complete", json=probe, timeout=60).json()

    async def crowd():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            others = [
                {"prefix": "goh"[k % 3], "max_new_chars": 50 + 5 * k, "temperature": 0.5 + k % 4 / 2, "seed": k}
                for k in range(63)
            ]
            bodies = others[:31] + [probe] + others[31:]
            responses = await asyncio.gather(*(client.post("/complete", json=b) for b in bodies))
            return [r.json() for r in responses]

    results = asyncio.run(crowd())
    assert all("choices" in r for r in results), [r for r in results if "choices" not in r][:1]
    assert results[31]["choices"] == alone["choices"]
    assert results[31]["seed"] == 2024


def test_a_client_that_disconnects_stops_its_generation(server):
    before = metric(server, "charrnn_generated_chars_total")
    body = {"prefix": "good", "max_new_chars": 1_000_000, "temperature": 1.0, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as client, client.stream("POST", "/complete", json=body) as r:
        lines = r.iter_lines()
        events = parse_events(next(lines) for _ in range(10))
        assert events
    # leaving the block closed the connection mid-stream
    wait_for(lambda: metric(server, "charrnn_batch_size") == 0, timeout=20)
    stopped_at = metric(server, "charrnn_generated_chars_total")
    assert stopped_at - before < 1_000_000
    # the count stays put: nothing is generating any more
    for _ in range(3):
        httpx.get(server.url + "/health")
        assert metric(server, "charrnn_generated_chars_total") == stopped_at
    assert metric(server, 'charrnn_completions_total{outcome="cancelled"}') >= 1


def test_a_client_that_gives_up_on_a_whole_response_stops_its_generation(server):
    before = metric(server, 'charrnn_completions_total{outcome="cancelled"}')
    body = {"prefix": "good", "max_new_chars": 1_000_000, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/complete", json=body, timeout=0.5)
    wait_for(lambda: metric(server, 'charrnn_completions_total{outcome="cancelled"}') == before + 1, timeout=20)
    wait_for(lambda: metric(server, "charrnn_batch_size") == 0, timeout=20)
    assert metric(server, "charrnn_generated_chars_total") < 1_000_000


def test_first_event_arrives_before_the_completion_is_done(server):
    body = {"prefix": "good", "max_new_chars": 200_000, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as client, client.stream("POST", "/complete", json=body) as r:
        lines = r.iter_lines()  # kept: dropping the iterator would close the connection
        first = parse_events([next(lines)])
        assert first and first[0]["choices"][0]["text"]
        assert metric(server, "charrnn_batch_size") >= 1  # still generating after the first event


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    env = {"CHARRNN_MAX_NEW_CHARS": "1000000", "CHARRNN_MAX_QUEUED_REQUESTS": "1", "CHARRNN_BATCHING": "false"}
    with Server(tmp_path, env=env) as server:

        async def burst():
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = {"prefix": "good", "max_new_chars": 30_000}
                return await asyncio.gather(*(client.post("/complete", json=body) for _ in range(8)))

        responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "overloaded"


def test_bfloat16_decoding_keeps_a_seed_independent_of_the_batch(tmp_path):
    """CHARRNN_DECODE_PRECISION=bf16 on a 2x128 LSTM: a row's products never depend on its batch-mates."""
    from app.lm.model import ModelConfig
    from app.lm.store import ModelStore
    from app.lm.train import build_model
    from app.lm.vocab import Vocab

    vocab = Vocab.from_text("abcdefghijklmnopqrstuvwxyz .,\n")
    cfg = ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=128, num_layers=2, encoding="embedding")
    store = ModelStore(tmp_path)
    store.save("lstm", build_model(cfg, seed=3).eval(), vocab)
    store.set_active("lstm")
    with Server(tmp_path, env={"CHARRNN_DECODE_PRECISION": "bf16"}) as s:
        assert httpx.get(s.url + "/health").json()["decode_dtype"] == "bfloat16"
        probe = {"prefix": "the ", "max_new_chars": 120, "temperature": 1.0, "seed": 77}
        alone = httpx.post(s.url + "/complete", json=probe, timeout=60).json()
        assert len(alone["choices"][0]["completion"]) == 120

        async def crowd():
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as client:
                bodies = [
                    {"prefix": "ab"[k % 2], "max_new_chars": 40 + k, "temperature": 0.9, "seed": k} for k in range(40)
                ]
                bodies.insert(20, probe)
                return [r.json() for r in await asyncio.gather(*(client.post("/complete", json=b) for b in bodies))]

        assert asyncio.run(crowd())[20]["choices"] == alone["choices"]
