"""Hostile input on every endpoint: each gets a 4xx in the JSON error envelope naming the problem, never a 5xx."""

import pytest

J = "application/json"
CASES = [
    # (method, path, raw body, content type, expected status, words in the message)
    ("POST", "/complete", b'{"prefix": "a\\ud800b"}', J, 422, "prefix"),
    ("POST", "/complete", b'{"prefix": "a", "prefix": "b"}', J, 422, "appears more than once"),
    ("POST", "/complete", b'{"prefix": "a", "max_new_chars": NaN}', J, 422, "max_new_chars"),
    ("POST", "/complete", b'{"prefix": "a", "temperature": Infinity}', J, 422, "temperature"),
    ("POST", "/complete", b'{"prefix": "a", "temperature": -Infinity}', J, 422, "temperature"),
    ("POST", "/complete", b'{"prefix": "a", "max_new_chars": 1e400}', J, 422, "max_new_chars"),
    ("POST", "/complete", b'{"prefix": "a", "max_new_chars": 3.5}', J, 422, "max_new_chars"),
    ("POST", "/complete", b'{"prefix": "a", "max_new_chars": true}', J, 422, "max_new_chars"),
    ("POST", "/complete", b'{"prefix": "a", "max_new_chars": "5"}', J, 422, "max_new_chars"),
    ("POST", "/complete", b'{"prefix": "a", "n": null}', J, 422, "n"),
    ("POST", "/complete", b'{"prefix": "a", "seed": 99999999999999999999999}', J, 422, "seed"),
    ("POST", "/complete", b'{"prefix": "a", "stop": [null]}', J, 422, "stop"),
    ("POST", "/complete", b'{"prefix": "a", "stop": [""]}', J, 422, "stop"),
    ("POST", "/complete", b'{"prefix": ["a"]}', J, 422, "prefix"),
    ("POST", "/complete", b'{"prefix": {"a": 1}}', J, 422, "prefix"),
    ("POST", "/complete", b"prefix=a", "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
    ("POST", "/complete", b'{"prefix": "a"}', "text/plain", 415, "Content-Type: application/json"),
    ("POST", "/complete", b'{"prefix": "a"}', None, 415, "sent no Content-Type"),
    ("POST", "/complete", b"[1, 2]", J, 422, "request body"),
    ("POST", "/complete", b"null", J, 422, "request body"),
    ("POST", "/complete", b"", J, 422, "request body"),
    ("POST", "/complete", b"\xff\xfe\x00", J, 422, "invalid JSON"),
    ("POST", "/complete", b'{"prefix": "a"', J, 422, "invalid JSON"),
    ("POST", "/complete", b'{"prefix": "a", "extra": 1}', J, 422, "extra"),
    ("POST", "/score", b'{"text": "a\\udc00bc"}', J, 422, "text"),
    ("POST", "/score", b'{"text": "ab", "model": "../x"}', J, 422, "model"),
    ("POST", "/train", b'{"name": "x", "sentences": ["a\\ud800"]}', J, 422, "lone surrogate"),
    ("POST", "/train", b'{"name": "../../etc/passwd", "sentences": ["ab"]}', J, 422, "name"),
    ("POST", "/train", b'{"name": ".hidden", "sentences": ["ab"]}', J, 422, "name"),
    ("POST", "/train", b'{"name": "a/b", "sentences": ["ab"]}', J, 422, "name"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "hidden_size": 1000000}', J, 422, "hidden_size"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "num_layers": 1000}', J, 422, "num_layers"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "seq_len": 100000}', J, 422, "seq_len"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "batch_size": 100000}', J, 422, "batch_size"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "epochs": 10000000}', J, 422, "epochs"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "batch_size": 4096, "seq_len": 999}', J, 422, "batch_size"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "max_seconds": 1e12}', J, 422, "max_seconds"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "learning_rate": NaN}', J, 422, "learning_rate"),
    ("POST", "/train", b'{"name": "x", "corpus_id": "../../x"}', J, 422, "corpus_id"),
    ("POST", "/train", b'{"name": "x", "sentences": ["ab"], "resume_from": "../x"}', J, 422, "resume_from"),
    ("GET", "/train/%2e%2e", None, None, 404, "no training job"),
    ("POST", "/models/..%2F..%2Fetc/activate", None, None, 404, "not found"),
    ("POST", "/models/%2e%2e/activate", None, None, 422, "invalid model name"),
    ("DELETE", "/models/.hidden", None, None, 422, "invalid model name"),
    ("POST", "/v1/completions", b'{"prompt": "a\\ud800", "max_tokens": 2}', J, 422, "lone surrogate"),
    ("POST", "/v1/completions", b'{"prompt": []}', J, 422, "prompt"),
    ("POST", "/v1/completions", b'{"prompt": "a", "logprobs": false}', J, 422, "logprobs"),
    ("POST", "/corpora", b"\xed\xa0\x80", "text/plain", 422, "not valid UTF-8"),
    ("PUT", "/complete", b"{}", J, 405, "not allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "ctype", "status", "words"), CASES)
def test_hostile_input_gets_a_clear_4xx(client, method, path, body, ctype, status, words):
    r = client.request(method, path, content=body, headers={"content-type": ctype} if ctype else {})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words.lower() in (error["message"] + " " + str(error.get("param"))).lower(), error


@pytest.mark.parametrize("prefix", ["\x00\x1f\u202e", "😀" * 100, "\ufeff\u200b", "ǅ" * 3, "a" * 10_000])
def test_odd_but_valid_unicode_completes(client, prefix):
    r = client.post("/complete", json={"prefix": prefix, "max_new_chars": 5})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"].startswith(prefix)
