"""The running service: its parts (models, completions, training jobs) and their lifecycle."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from app.config import Settings
from app.cpus import usable_cpus
from app.engine import Engine
from app.lm.prefix_cache import PrefixCache
from app.lm.store import ModelStore
from app.metrics import Metrics
from app.service.completions import Completions
from app.service.jobs import TrainingJobs
from app.service.models import Models, StartupCancelled

log = logging.getLogger(__name__)


class Service:
    """Starts and stops the parts; says whether completions can be served (ready)."""

    def __init__(self, settings: Settings, device: torch.device, metrics: Metrics | None = None):
        self.settings = settings
        self.device = device
        self.metrics = metrics or Metrics()
        self.store = ModelStore(settings.model_store)
        self.prefix_cache = PrefixCache(settings.prefix_cache_bytes)
        self.engine = Engine(
            max_batch_size=settings.max_batch_size,
            max_queued=settings.max_queued_requests,
            batching=settings.batching,
            metrics=self.metrics,
            workers=decode_workers(settings.decode_workers, device),
            one_thread=device.type == "cpu",
            prefix_cache=self.prefix_cache,
            compiled=settings.compiled_decoding,
        )
        self.metrics.batch_size.set_function(lambda: self.engine.rows)
        self.metrics.queue_depth.set_function(lambda: self.engine.queued)
        self.models = Models(settings, device, self.store, self.metrics, on_swap=self.prefix_cache.clear)
        self.metrics.prefix_cache_hits.set_function(lambda: self.prefix_cache.hits)
        self.metrics.prefix_cache_misses.set_function(lambda: self.prefix_cache.misses)
        self.metrics.prefix_cache_bytes.set_function(lambda: self.prefix_cache.bytes)
        self.completions = Completions(self.models, self.engine)
        self.jobs = TrainingJobs(self.store, device, self.metrics, settings.max_jobs_kept, self.models.swap_in)
        self.startup_error: str | None = None  # why no model could be loaded or trained
        self._stopped = threading.Event()
        self._startup: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Loads the active checkpoint (or trains and saves the default model when there is none),
        then starts the decode workers and, for replicas on a shared store, the active-model watch."""
        self.models.load_startup_model(self._stopped.is_set)
        self.engine.start()
        if self.settings.active_poll_seconds > 0 and not self._stopped.is_set():
            self._watcher = threading.Thread(target=self._follow_active, name="active-model-watch", daemon=True)
            self._watcher.start()

    def start_in_background(self, on_failure: Callable[[str], None] | None = None) -> None:
        """start() on a thread, so the port opens at once: /health answers meanwhile and /ready
        says when completions can be served. A start that cannot produce a model records why
        (startup_error, naming no path) and calls on_failure with the whole reason."""

        def run() -> None:
            try:
                self.start()
            except StartupCancelled:
                return
            except Exception as exc:  # one clear line: the process cannot serve without a model
                why = "no model could be loaded or trained"
                public = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.startup_error = f"{why}: {type(exc).__name__}: {public}"
                log.debug("startup failed", exc_info=True)
                if on_failure is not None:
                    on_failure(f"{why}: {type(exc).__name__}: {exc}")

        self._startup = threading.Thread(target=run, name="model-startup", daemon=True)
        self._startup.start()

    def _follow_active(self) -> None:
        while not self._stopped.wait(self.settings.active_poll_seconds):
            self.models.follow_active()

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    @property
    def ready(self) -> bool:
        """A model is loaded and the decode workers run (readiness, not liveness)."""
        return self.models.active_or_none is not None and self.engine.running and not self._stopped.is_set()

    def stop(self) -> None:
        """Cancels a running training job (and a startup still training), lets completions in flight
        finish, and joins every thread the service started."""
        self._stopped.set()
        self.jobs.stop(timeout=0)
        for thread in (self._startup, self._watcher):
            if thread is not None:
                thread.join(timeout=10)
        self.engine.stop()
        self.jobs.stop(timeout=10)


def decode_workers(setting: int, device: torch.device) -> int:
    """0 = automatic: on the CPU one single-threaded worker per two usable CPUs (at most 4), leaving
    the rest to the HTTP side (one batch of many rows uses a core better than two smaller batches;
    bench/serve.py measures it); one on a GPU. Usable: the process's affinity and its container's
    CPU limit (app/cpus.py), not the node's core count."""
    if setting > 0:
        return setting
    return max(1, min(usable_cpus() // 2, 4)) if device.type == "cpu" else 1
