"""Request size limits: 413 in the error envelope before any work, larger for training bodies; CORS off by default."""

import pytest

from app.main import create_app
from tests.conftest import make_settings, serving


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("limits"), max_body_bytes=2048, max_train_body_bytes=10_000)
    with serving(create_app(settings)) as c:
        yield c


def test_an_oversized_body_is_413(small):
    r = small.post("/complete", json={"prefix": "x" * 3000})
    assert r.status_code == 413
    assert r.json()["error"] == {
        "type": "too_large",
        "message": "request body over the limit of 2048 bytes",
        "param": "body",
    }


def test_an_oversized_body_without_a_length_is_413_too(small):
    def chunks():
        for _ in range(10):
            yield b"x" * 500

    r = small.post("/complete", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_training_bodies_get_the_larger_limit(small):
    r = small.post("/train", json={"corpus": "y" * 5000})  # under 10 kB: reaches validation
    assert r.status_code == 422 and r.json()["error"]["param"] == "name"
    assert small.post("/train", json={"name": "big", "corpus": "y" * 20_000}).status_code == 413


def test_cors_is_off_unless_configured(client, tmp_path):
    preflight = {"Origin": "https://example.test", "Access-Control-Request-Method": "POST"}
    r = client.options("/complete", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    settings = make_settings(tmp_path, cors_origins=["https://example.test"])
    with serving(create_app(settings)) as c:
        r = c.options("/complete", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://example.test"
