"""The running service: the active model, completions, training jobs and the atomic model swap."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from app.config import Settings
from app.engine import Engine, GenerationRequest
from app.errors import Conflict, InvalidInput, NotFound
from app.lm import default as default_model
from app.lm.data import minimum_corpus_chars
from app.lm.device import decode_dtype
from app.lm.generate import SamplingParams, random_seed
from app.lm.model import CharRNN
from app.lm.score import Score, score_text
from app.lm.store import Checkpoint, CorruptCheckpoint, InvalidModelName, ModelNotFound, ModelStore
from app.lm.train import Progress, TrainingCancelled, TrainingDiverged, train_on_text
from app.lm.vocab import Vocab
from app.metrics import Metrics
from app.training import TrainSpec, describe_training, run_training, text_description

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LoadedModel:
    """Everything one request needs, swapped as a single reference: no request sees half a swap."""

    name: str
    model: CharRNN
    vocab: Vocab
    meta: dict
    decode_dtype: torch.dtype = torch.float32  # of decoding's matrix products (settings.decode_precision)


@dataclass
class Completion:
    model: str
    seed: int
    prefix: str
    choices: list[dict]
    unknown_chars: list[str]
    prefix_chars: int
    completion_chars: int


@dataclass
class TrainingJob:
    job_id: str
    name: str
    spec: TrainSpec
    status: str = "queued"  # queued | running | succeeded | failed | cancelled
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None  # training loss (mean since the last report)
    val_loss: float | None = None  # latest validation loss (nats per character)
    val_bpc: float | None = None
    best_val_loss: float | None = None
    lr: float | None = None
    chars_per_s: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    history: list[dict] = field(default_factory=list)  # one entry per validation
    error: str | None = None
    created_at: str = field(default_factory=_now)
    finished_at: str | None = None
    version: int = 0  # bumped on every change, for the progress stream
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class StartupCancelled(Exception):
    """The service was stopped while it was still loading or training its first model."""


class ModelService:
    def __init__(self, settings: Settings, device: torch.device, metrics: Metrics | None = None):
        self.settings = settings
        self.device = device
        self.metrics = metrics or Metrics()
        self.store = ModelStore(settings.model_store)
        self.engine = Engine(
            max_batch_size=settings.max_batch_size,
            max_queued=settings.max_queued_requests,
            batching=settings.batching,
            metrics=self.metrics,
            workers=decode_workers(settings.decode_workers, device),
            one_thread=device.type == "cpu",
        )
        self.metrics.batch_size.set_function(lambda: self.engine.rows)
        self.metrics.queue_depth.set_function(lambda: self.engine.queued)
        self._active: LoadedModel | None = None
        self._jobs: OrderedDict[str, TrainingJob] = OrderedDict()
        self._jobs_lock = threading.Lock()
        self._running: TrainingJob | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._startup: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self.startup_error: str | None = None  # why no model could be loaded or trained
        self.how_loaded: str | None = None  # "loaded" | "trained": how the first model got here

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Loads the active checkpoint, or trains and saves the default model when there is none."""
        self._load_startup_model()
        self.engine.start()
        if self.settings.active_poll_seconds > 0 and not self._stopped.is_set():
            self._watcher = threading.Thread(target=self._follow_active, name="active-model-watch", daemon=True)
            self._watcher.start()

    def start_in_background(self, on_failure: Callable[[str], None] | None = None) -> None:
        """start() on a thread, so the port opens at once: /health answers meanwhile and /ready
        says when completions can be served. A start that cannot produce a model records why
        (startup_error) and calls on_failure with that one line."""

        def run() -> None:
            try:
                self.start()
            except StartupCancelled:
                return
            except Exception as exc:  # one clear line: the process cannot serve without a model
                why = "no model could be loaded or trained"
                # the API's message names no path; the log line may
                public = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.startup_error = f"{why}: {type(exc).__name__}: {public}"
                log.debug("startup failed", exc_info=True)
                if on_failure is not None:
                    on_failure(f"{why}: {type(exc).__name__}: {exc}")

        self._startup = threading.Thread(target=run, name="model-startup", daemon=True)
        self._startup.start()

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    @property
    def ready(self) -> bool:
        """A model is loaded and the decode workers run (readiness, not liveness)."""
        return self._active is not None and self.engine.running and not self._stopped.is_set()

    def _follow_active(self) -> None:
        """Replicas share model_store: when another process activates a model, switch to it too."""
        while not self._stopped.wait(self.settings.active_poll_seconds):
            try:
                name = self.store.active_name()
                if name is None:
                    continue
                current = self.active
                sha = self.store.read_meta(name).get("weights_sha256")
                if name == current.name and sha == current.meta.get("weights_sha256"):
                    continue
                self._activate(self.store.load(name, self.device))
                log.info("switched to model %r, activated in %s by another process", name, self.store.root)
            except Exception as exc:  # a half-written or broken model: keep serving, look again later
                log.warning("could not follow the active model in %s: %s", self.store.root, exc)

    def _load_startup_model(self) -> None:
        """The active model; if it is broken, the newest stored model that loads; if none does, the
        default model, trained again. Every broken checkpoint is logged with its file."""
        started = time.perf_counter()
        for leftover in self.store.remove_stale_temporaries():
            log.warning("removed %s, left in %s by an interrupted write", leftover, self.store.root)
        active = self.store.active_name()
        candidates = [active] if active is not None else []
        others = [n for n in self.store.names() if n != active]
        candidates += sorted(others, key=self._created_at, reverse=True)
        for name in candidates:
            try:
                checkpoint = self.store.load(name, self.device)
            except (ModelNotFound, CorruptCheckpoint) as exc:
                log.error("model %r cannot be loaded: %s", name, exc)
                continue
            self._activate(checkpoint)
            if name != active:
                self.store.set_active(name)
            self.how_loaded = "loaded"
            log.info(
                "loaded %s model %r from %s onto %s in %.2fs",
                "active" if name == active else "last good",
                name,
                self.store.root,
                self.device,
                time.perf_counter() - started,
            )
            return
        self._train_default()
        self.how_loaded = "trained"
        log.info(
            "no usable checkpoint in %s: trained the default model %r and saved it in %.2fs (device %s)",
            self.store.root,
            self.settings.default_model_name,
            time.perf_counter() - started,
            self.device,
        )

    def _created_at(self, name: str) -> str:
        try:
            return str(self.store.read_meta(name).get("created_at", ""))
        except Exception:
            return ""

    def _train_default(self) -> None:
        # trained on the CPU whatever the serving device, so every install gets the same weights
        try:
            trained = train_on_text(
                sentences=default_model.SENTENCES,
                config=default_model.TRAIN_CONFIG,
                should_stop=self._stopped.is_set,
                **default_model.MODEL_KWARGS,
            )
        except TrainingCancelled:
            raise StartupCancelled() from None
        model, vocab, result = trained.model, trained.vocab, trained.result
        name = self.settings.default_model_name
        meta = self.store.save(
            name,
            model,
            vocab,
            training={
                "source": "sentences",
                **text_description(sentences=default_model.SENTENCES),
                **default_model.TRAIN_CONFIG.to_json(),
            },
            metrics={"final_loss": result.final_loss, "steps": result.steps, "seconds": round(result.seconds, 3)},
        )
        if self._active is None:  # a user's job may have activated its model meanwhile
            self.store.set_active(name)
            self._activate(Checkpoint(name, model.to(self.device), vocab, meta))

    def stop(self) -> None:
        """Stops a running training job, and lets completions in flight finish."""
        self._stopped.set()
        job = self._running
        if job is not None:
            job.cancel.set()
        for thread in (self._startup, self._watcher):
            if thread is not None:
                thread.join(timeout=10)
        self.engine.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _activate(self, checkpoint: Checkpoint) -> None:
        dtype = decode_dtype(self.settings.decode_precision, self.device, checkpoint.model.config.hidden_size)
        self._active = LoadedModel(checkpoint.name, checkpoint.model, checkpoint.vocab, checkpoint.meta, dtype)
        self.metrics.active_model.info(
            {"name": checkpoint.name, "created_at": str(checkpoint.meta.get("created_at", ""))}
        )

    @property
    def active_or_none(self) -> LoadedModel | None:
        return self._active

    @property
    def active(self) -> LoadedModel:
        assert self._active is not None, "service not started"
        return self._active

    # ---- completion --------------------------------------------------------------------------

    def submit_completion(
        self, prefix: str, params: SamplingParams, n: int = 1, seed: int | None = None, stream: bool = False
    ) -> GenerationRequest:
        """Queues a completion on the engine (429 when the queue is full). Call from the event loop."""
        req = GenerationRequest(
            prefix=prefix,
            params=params,
            n=n,
            seed=random_seed() if seed is None else seed,
            loaded=self.active,  # one model for the whole request, even if a swap happens meanwhile
            stream=stream,
            loop=asyncio.get_running_loop(),
        )
        self.engine.submit(req)
        return req

    def summary(self, req: GenerationRequest) -> Completion:
        return Completion(
            model=req.loaded.name,
            seed=req.seed,
            prefix=req.prefix,
            choices=[
                {"index": s.index, "text": req.prefix + s.text, "completion": s.text, "finish_reason": s.finish_reason}
                for s in req.seqs
            ],
            unknown_chars=req.loaded.vocab.unknown_chars(req.prefix),
            prefix_chars=len(req.prefix),
            completion_chars=sum(len(s.text) for s in req.seqs),
        )

    # ---- models ------------------------------------------------------------------------------

    def list_models(self) -> list[dict]:
        """A short summary per stored model (GET /models); model_detail has the rest."""
        active = self._active.name if self._active is not None else None
        out = []
        for name in self.store.names():
            try:
                meta = self.store.read_meta(name)
                self.store.verify(name)
            except CorruptCheckpoint as exc:
                out.append({"name": name, "active": name == active, "ok": False, "error": str(exc)})
                continue
            config = meta.get("model_config") or {}
            out.append(
                {
                    "name": name,
                    "active": name == active,
                    "ok": True,
                    "cell": config.get("cell"),
                    "hidden_size": config.get("hidden_size"),
                    "num_layers": config.get("num_layers"),
                    "num_parameters": meta.get("num_parameters"),
                    "val_bpc": (meta.get("metrics") or {}).get("best_val_bpc"),
                    "created_at": meta.get("created_at"),
                }
            )
        return out

    def model_detail(self, name: str) -> dict:
        """Everything a stored model's metadata says about it, but the text it was trained on."""
        with _as_client_errors("name"):
            meta = self.store.read_meta(name)
            self.store.verify(name)
        config = meta.get("model_config") or {}
        return {
            "name": name,
            "active": self._active is not None and name == self._active.name,
            "ok": True,
            "created_at": meta.get("created_at"),
            "model_config": config,
            "training": describe_training(meta.get("training") or {}),
            "metrics": meta.get("metrics"),
            "num_parameters": meta.get("num_parameters"),
            "vocab_size": config.get("vocab_size"),
        }

    # ---- training ----------------------------------------------------------------------------

    def submit_training(self, spec: TrainSpec) -> TrainingJob:
        try:
            exists = self.store.exists(spec.name)
            if spec.resume_from is not None and not self.store.exists(spec.resume_from):
                raise NotFound(f"no model named {spec.resume_from!r} to resume from", "resume_from")
        except InvalidModelName as exc:
            raise InvalidInput(str(exc), "name") from None
        if spec.corpus_chars is not None:
            config = spec.train_config()
            needed = minimum_corpus_chars(config.batch_size, config.val_fraction)
            if spec.corpus_chars < needed:
                raise InvalidInput(
                    f"corpus: {spec.corpus_chars} characters is too short for one training window with "
                    f"batch_size {config.batch_size} and val_fraction {config.val_fraction} (needs at least "
                    f"{needed}); send more text or lower batch_size",
                    "corpus" if spec.corpus is not None else "corpus_id",
                )
        if exists and not spec.overwrite and spec.resume_from != spec.name:
            raise Conflict(f"a model named {spec.name!r} already exists; set overwrite to replace it", "name")
        with self._jobs_lock:
            if self._running is not None and not self._running.done:
                raise Conflict(f"training job {self._running.job_id} is still running; one job runs at a time")
            job = TrainingJob(job_id=uuid.uuid4().hex, name=spec.name, spec=spec, epochs=spec.train_config().epochs)
            self._jobs[job.job_id] = job
            while len(self._jobs) > self.settings.max_jobs_kept:
                self._jobs.popitem(last=False)
            self._running = job
            self._thread = threading.Thread(target=self._run_job, args=(job,), name=f"train-{job.job_id[:8]}")
            self._thread.start()
        return job

    def get_job(self, job_id: str) -> TrainingJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no training job {job_id!r}", "job_id")
        return job

    def cancel_job(self, job_id: str) -> TrainingJob:
        job = self.get_job(job_id)
        if not job.done:
            job.cancel.set()
        return job

    def _run_job(self, job: TrainingJob) -> None:
        spec = job.spec
        job.status = "running"
        job.version += 1
        log.info("training job %s started: model %r from %s", job.job_id, spec.name, spec.source)

        def on_progress(p: Progress) -> None:
            job.epoch, job.step, job.total_steps, job.loss = p.epoch, p.step, p.total_steps, p.loss
            job.lr, job.chars_per_s, job.elapsed, job.eta = p.lr, p.chars_per_s, p.elapsed, p.eta
            if p.evaluation is not None:
                e = p.evaluation
                job.val_loss, job.val_bpc = e.val_loss, e.val_bpc
                if e.val_loss is not None and (job.best_val_loss is None or e.val_loss < job.best_val_loss):
                    job.best_val_loss = e.val_loss
                job.history.append(
                    {
                        "step": e.step,
                        "epoch": e.epoch,
                        "train_loss": e.train_loss,
                        "val_loss": e.val_loss,
                        "val_bpc": e.val_bpc,
                        "elapsed": round(e.elapsed, 3),
                    }
                )
            if p.total_steps:
                self.metrics.training_progress.set(p.step / p.total_steps)
            job.version += 1

        try:
            trained, meta = run_training(spec, self.store, self.device, on_progress, job.cancel.is_set)
            if spec.activate:
                self.store.set_active(spec.name)
                self._activate(Checkpoint(spec.name, trained.model, trained.vocab, meta))
            job.status = "succeeded"
            log.info(
                "training job %s succeeded: %d steps in %.1fs, best validation loss %s",
                job.job_id,
                trained.result.steps,
                trained.result.seconds,
                trained.result.best_val_loss,
            )
        except TrainingCancelled:
            job.status = "cancelled"
            log.info("training job %s cancelled; nothing was saved", job.job_id)
        except TrainingDiverged as exc:
            job.status, job.error = "failed", str(exc)
            log.warning("training job %s failed: %s", job.job_id, exc)
        except (ValueError, UnicodeDecodeError) as exc:  # the text or settings cannot be trained on
            job.status, job.error = "failed", str(exc)
            log.warning("training job %s failed: %s", job.job_id, exc)
        except OSError as exc:  # the message names no path (the log does)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc.strerror or 'I/O error'}"
            log.warning("training job %s failed: %s", job.job_id, exc)
        except Exception as exc:  # a failed job must never take the service down
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("training job %s failed", job.job_id)
        finally:
            job.finished_at = _now()
            job.version += 1
            self.metrics.training_jobs.labels(job.status).inc()
            self.metrics.training_progress.set(0)

    # ---- model management and scoring --------------------------------------------------------

    def activate(self, name: str) -> LoadedModel:
        """Loads a stored model and swaps it in atomically; requests in flight finish on the old one."""
        with _as_client_errors("name"):
            checkpoint = self.store.load(name, self.device)
        self.store.set_active(name)
        self._activate(checkpoint)
        log.info("activated model %r", name)
        return self.active

    def delete(self, name: str) -> None:
        if self._active is not None and name == self._active.name:
            raise Conflict(f"model {name!r} is active; activate another before deleting it", "name")
        job = self._running
        if job is not None and not job.done and name in (job.spec.name, job.spec.resume_from):
            raise Conflict(f"training job {job.job_id} is using model {name!r}", "name")
        with _as_client_errors("name"):
            self.store.delete(name)
        log.info("deleted model %r", name)

    def score(self, text: str, name: str | None = None) -> tuple[str, Score]:
        loaded = self.active
        if name is None or name == loaded.name:
            return loaded.name, score_text(loaded.model, loaded.vocab, text)
        with _as_client_errors("model"):
            checkpoint = self.store.load(name, self.device)
        return name, score_text(checkpoint.model, checkpoint.vocab, text)


@contextmanager
def _as_client_errors(param: str):
    """The store's errors as the API's: a bad name 422, a missing model 404, a broken one 409."""
    try:
        yield
    except InvalidModelName as exc:
        raise InvalidInput(str(exc), param) from None
    except ModelNotFound as exc:
        raise NotFound(str(exc), param) from None
    except CorruptCheckpoint as exc:
        raise Conflict(f"the model cannot be loaded: {exc}", param) from None


def decode_workers(setting: int, device: torch.device) -> int:
    """0 = automatic: on the CPU one per two cores (at most 4), leaving the rest to the HTTP side
    (measured on 2 cores: one single-threaded worker batching 64 rows served 63.6k chars/s over
    HTTP, two workers 48.5k: batch 64 uses a core better than two batches of 32); one on a GPU."""
    if setting > 0:
        return setting
    return max(1, min((os.cpu_count() or 1) // 2, 4)) if device.type == "cpu" else 1
