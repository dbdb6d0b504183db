"""Request ids, per-request log lines, JSON logs and Prometheus metrics."""

import json
import logging

import httpx
import pytest

from app.devserver import Server
from app.logs import JsonFormatter


def test_request_id_is_echoed_or_made(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32
    assert client.get("/health", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"] != "bad id\n"


def test_one_log_line_per_request_with_its_id(client, caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    client.post("/complete", json={"prefix": "good", "max_new_chars": 2}, headers={"X-Request-ID": "req-42"})
    lines = [r for r in caplog.records if r.name == "app.access" and getattr(r, "request_id", None) == "req-42"]
    assert len(lines) == 1
    assert lines[0].status == 200 and lines[0].route == "/complete"
    entry = json.loads(JsonFormatter().format(lines[0]))
    assert entry["request_id"] == "req-42" and entry["status"] == 200 and entry["level"] == "info"


def test_metrics_cover_requests_generation_batching_training_and_the_model(client):
    client.post("/complete", json={"prefix": "good", "max_new_chars": 5})
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert 'charrnn_http_requests_total{method="POST",route="/complete",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert 'charrnn_http_request_seconds_bucket{le="0.005",route="/complete"}' in text
    for name in (
        "charrnn_generated_chars_total",
        "charrnn_batch_size",
        "charrnn_queue_depth",
        "charrnn_training_progress",
        'charrnn_active_model_info{created_at="',
    ):
        assert name in text


@pytest.mark.server
def test_json_logs_from_a_real_server(tmp_path):
    with Server(tmp_path, env={"CHARRNN_LOG_JSON": "true"}) as server:
        httpx.get(server.url + "/health", headers={"X-Request-ID": "json-1"})
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    [access] = [e for e in entries if e.get("request_id") == "json-1"]
    assert access["route"] == "/health" and access["status"] == 200 and access["logger"] == "app.access"
    assert any("trained the default model" in e["message"] for e in entries)
