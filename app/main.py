"""create_app(): the FastAPI application, its lifespan, routers and error handlers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from app.api import complete, corpora, docs, health, metrics, models, openai, score, train, vocab, web
from app.api.deps import require_admin, require_user
from app.api.errors import install_error_handlers
from app.api.middleware import BodyLimitMiddleware, RequestLogMiddleware
from app.config import Settings, get_settings
from app.engine import configure_torch_threads
from app.lm.device import DeviceUnavailable, resolve_device
from app.logs import configure_logging
from app.service import Service
from app.service.corpora import CorpusStore

log = logging.getLogger("app")

DESCRIPTION = """
Character-level text completion with small recurrent language models (RNN, LSTM, GRU).

Send a prefix to **POST /complete** and get its continuation. Train a model on your own text
with **POST /train**. Characters a model has never seen are read as an UNK id, never an error.
"""


class StartupError(RuntimeError):
    """The service cannot start; the message says why in one line."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level, settings.log_json)
        try:
            device = resolve_device(settings.device)
        except DeviceUnavailable as exc:
            log.error("cannot start: CHARRNN_DEVICE=%s: %s", settings.device, exc)
            raise StartupError(f"CHARRNN_DEVICE={settings.device}: {exc}") from None
        configure_torch_threads(settings.torch_threads)
        service = Service(settings, device)
        app.state.service = service
        app.state.startup_error = None

        def failed(reason: str) -> None:  # on the startup thread: no model, so the process cannot serve
            log.error("cannot start: %s", reason)
            app.state.startup_error = reason
            app.state.shutdown()

        # the port opens now; the model loads (or the default model trains) in the background
        service.start_in_background(on_failure=failed)
        url = app.state.public_url
        if url:
            log.info(
                "API docs at %s/docs, the service at %s/ (ready at %s/ready once the model is loaded)", url, url, url
            )
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)
            app.state.service = None

    app = FastAPI(
        title="char-rnn completion service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by app.api.docs, from local files rather than a CDN
        redoc_url=None,
    )
    app.state.public_url = None  # set by `charrnn serve` (http://host:port), for the startup log
    app.state.shutdown = lambda: None  # set by `charrnn serve`: asks the server to exit

    # read by app.api.deps.app_settings; not dependency_overrides, with which FastAPI re-analyses
    # every dependency's signature on every request
    app.state.settings = settings
    app.add_middleware(
        BodyLimitMiddleware, default_limit=settings.max_body_bytes, large_limit=settings.max_train_body_bytes
    )
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(
        RequestLogMiddleware, metrics_of=lambda: getattr(getattr(app.state, "service", None), "metrics", None)
    )
    app.state.corpora = CorpusStore(Path(settings.model_store) / "corpora", settings.max_corpus_bytes)
    install_error_handlers(app)
    user, admin = [Depends(require_user)], [Depends(require_admin)]
    for module in (complete, vocab, models, score, openai):
        app.include_router(module.router, dependencies=user)
    for module in (train, corpora):  # training: the admin key where one is set
        app.include_router(module.router, dependencies=admin)
    for module in (health, metrics, docs, web):  # public
        app.include_router(module.router)
    docs.install_openapi(app)
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.ASSETS_DIR), name="docs-assets")
    if settings.ui:  # the web page's files (its data comes from the API, behind the keys)
        app.mount(web.ASSETS_URL, web.WebFiles(directory=web.WEB_DIR), name="web")
    return app
