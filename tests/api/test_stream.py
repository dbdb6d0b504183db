import pytest

from tests.sse import parse_events, streamed_text


def stream(client, body):
    with client.stream("POST", "/complete", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        headers = r.headers
        events = parse_events(r.iter_lines())
    return headers, events


def test_stream_format_headers_and_final_event(client):
    headers, events = stream(client, {"prefix": "good", "max_new_chars": 11})
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["choices"] == [{"index": 0, "text": "", "finish_reason": "length"}]
    assert final["usage"] == {"prefix_chars": 4, "completion_chars": 11}
    assert final["model"] == "default"
    assert streamed_text(events) == " i am fine "


@pytest.mark.parametrize(
    "body",
    [
        {"prefix": "h", "max_new_chars": 60, "temperature": 1.0, "seed": 4, "n": 3},
        {"prefix": "good", "max_new_chars": 60, "stop": ["fine"]},
        {"prefix": "h", "max_new_chars": 80, "temperature": 1.0, "seed": 11, "stop": ["a", "ow", "nice d"], "n": 4},
    ],
)
def test_streamed_text_equals_the_whole_response_and_no_stop_string_leaks(client, body):
    whole = client.post("/complete", json=body).json()
    _, events = stream(client, body)
    final = events[-2]
    for choice in whole["choices"]:
        text = streamed_text(events, choice["index"])
        assert text == choice["completion"]
        assert final["choices"][choice["index"]]["finish_reason"] == choice["finish_reason"]
        for s in body.get("stop", []):
            assert s not in text


def test_stop_prefix_is_held_back_until_it_cannot_be_a_stop(client):
    # "fine" is a stop: "f", "fi", "fin" must never be streamed ahead of the verdict
    _, events = stream(client, {"prefix": "good", "max_new_chars": 60, "stop": ["fine"]})
    deltas = [c["text"] for e in events[:-2] for c in e["choices"]]
    assert "".join(deltas) == " i am "
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_validation_errors_are_plain_422(client):
    r = client.post("/complete", json={"prefix": "", "stream": True})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "prefix"
