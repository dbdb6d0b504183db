"""API keys on every protected route: missing, wrong, right, and the plain key on admin routes."""

import pytest

from app.main import create_app
from tests.conftest import make_settings, serving

USER, ADMIN = "user-key-123", "admin-key-456"

USER_ROUTES = [
    ("POST", "/complete", {"prefix": "good", "max_new_chars": 3}),
    ("GET", "/vocab", None),
    ("GET", "/models", None),
    ("POST", "/score", {"text": "good"}),
    ("POST", "/v1/completions", {"prompt": "good", "max_tokens": 3}),
    ("GET", "/v1/models", None),
]
ADMIN_ROUTES = [
    ("POST", "/train", {"name": "k", "sentences": ["ab"], "epochs": 1, "activate": False}),
    ("GET", "/train/unknown", None),
    ("POST", "/train/unknown/cancel", None),
    ("GET", "/corpora", None),
    ("POST", "/models/default/activate", None),
    ("DELETE", "/models/missing", None),
]
PUBLIC_ROUTES = [
    ("GET", "/health", None),
    ("GET", "/metrics", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("auth"), api_key=USER, admin_api_key=ADMIN)
    with serving(create_app(settings)) as c:
        yield c


def call(client, method, path, body, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), USER_ROUTES + ADMIN_ROUTES)
def test_missing_or_wrong_key_is_401_in_the_envelope(keyed, method, path, body):
    for key in (None, "wrong", f"{USER}x"):
        r = call(keyed, method, path, body, key)
        assert r.status_code == 401, (path, key, r.text)
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), USER_ROUTES)
def test_the_plain_key_opens_user_routes(keyed, method, path, body):
    assert call(keyed, method, path, body, USER).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_the_plain_key_is_not_enough_for_admin_routes(keyed, method, path, body):
    assert call(keyed, method, path, body, USER).status_code == 401
    assert call(keyed, method, path, body, ADMIN).status_code != 401


@pytest.mark.parametrize(("method", "path", "body"), PUBLIC_ROUTES)
def test_health_metrics_and_docs_stay_public(keyed, method, path, body):
    assert call(keyed, method, path, body).status_code == 200


def test_without_keys_everything_is_open(client):
    assert client.get("/vocab").status_code == 200
    assert client.get("/corpora").status_code == 200


def test_keys_never_reach_the_logs(tmp_path, caplog):
    settings = make_settings(tmp_path, api_key=USER, admin_api_key=ADMIN)
    with serving(create_app(settings)) as c:
        call(c, "GET", "/vocab", None, USER)
        call(c, "GET", "/corpora", None, "a-wrong-key")
    assert USER not in caplog.text and ADMIN not in caplog.text and "a-wrong-key" not in caplog.text
