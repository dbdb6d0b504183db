"""Shared fixtures: a fresh model_store per test module and a TestClient running the lifespan."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def make_settings(store, **overrides) -> Settings:
    return Settings(model_store=store, device="cpu", **overrides)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("model_store"))


@contextmanager
def serving(app, timeout: float = 60.0, **client_kwargs) -> Iterator[TestClient]:
    """A TestClient running the app's lifespan, once the app is ready (GET /ready): the port of a
    real server opens before its model is loaded."""
    with TestClient(app, **client_kwargs) as c:
        wait_for(lambda: c.get("/ready").status_code == 200, timeout, interval=0.05)
        yield c


@pytest.fixture(scope="module")
def client(module_store) -> Iterator[TestClient]:
    """A service on the default model, shared by a module's read-only tests."""
    with serving(create_app(make_settings(module_store))) as c:
        yield c


@pytest.fixture
def fresh_client(tmp_path) -> Iterator[TestClient]:
    """A service of its own, for tests that train or change the active model."""
    with serving(create_app(make_settings(tmp_path))) as c:
        yield c


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02):
    """Polls until predicate() is truthy (and returns it), or fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_for_job(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    def finished():
        body = client.get(f"/train/{job_id}").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, timeout)
