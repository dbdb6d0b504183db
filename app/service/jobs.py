"""Training jobs: one at a time, on a thread of its own, with progress callers can follow and cancel."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from app.errors import Conflict, InvalidInput, NotFound
from app.lm.data import MIN_CORPUS_CHARS
from app.lm.store import Checkpoint, InvalidModelName, ModelStore
from app.lm.train import Evaluation, Progress, Trained, TrainingCancelled, TrainingDiverged
from app.metrics import Metrics
from app.service.job_board import JobBoard
from app.service.training import TrainSpec, run_training

FINISHING_SECONDS = 10.0  # how long a new job waits for a finished one's thread to hand over the slot
log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LossCurve:
    """The training loss against step, for a live chart: points from the first step on, bounded.

    A point is the mean loss of the steps since the previous one, made at the first report and
    then once `every_steps` steps or `every_seconds` seconds have passed (whichever comes first).
    When `max_points` are kept, neighbours merge in pairs and both spacings double: a long job
    keeps an evenly spaced curve of at most `max_points` points, a short one a point every few steps.
    """

    def __init__(self, max_points: int = 500, every_steps: int = 10, every_seconds: float = 1.0):
        self.max_points = max_points
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.points: list[dict] = []  # {"step", "train_loss", "elapsed"}; replaced, never changed in place
        self._weights: list[int] = []  # steps each point averages (for merging)
        self._total = 0.0  # loss summed over the steps not yet in a point
        self._steps = 0
        self._last_step = 0  # of the previous report
        self._last_point: tuple[int, float] | None = None  # (step, elapsed) of the latest point

    def add(self, step: int, loss: float, elapsed: float) -> None:
        """One progress report: `loss` is the mean over the steps since the previous report."""
        steps = step - self._last_step if self._last_step else 1  # (a resumed run starts past step 0)
        self._last_step = step
        self._total += loss * steps
        self._steps += steps
        if self._last_point is None or (
            step - self._last_point[0] >= self.every_steps or elapsed - self._last_point[1] >= self.every_seconds
        ):
            self.flush(step, elapsed)

    def flush(self, step: int, elapsed: float) -> None:
        """Makes a point of the steps not yet in one (at the end of a job)."""
        if not self._steps:
            return
        point = {"step": step, "train_loss": self._total / self._steps, "elapsed": round(elapsed, 3)}
        points, weights = [*self.points, point], [*self._weights, self._steps]
        self._total, self._steps, self._last_point = 0.0, 0, (step, elapsed)
        if len(points) > self.max_points:
            points, weights = _merge_pairs(points, weights)
            self.every_steps *= 2
            self.every_seconds *= 2
        self.points, self._weights = points, weights  # readers on other threads see one list or the other


def _merge_pairs(points: list[dict], weights: list[int]) -> tuple[list[dict], list[int]]:
    """Halves a curve: each pair of neighbours becomes one point at the later step, the mean of both."""
    merged, merged_weights = [], []
    for i in range(0, len(points) - 1, 2):
        (a, b), (wa, wb) = points[i : i + 2], weights[i : i + 2]
        loss = (a["train_loss"] * wa + b["train_loss"] * wb) / (wa + wb)
        merged.append({"step": b["step"], "train_loss": loss, "elapsed": b["elapsed"]})
        merged_weights.append(wa + wb)
    if len(points) % 2:  # the latest point stays as it is
        merged.append(points[-1])
        merged_weights.append(weights[-1])
    return merged, merged_weights


STATUS_FIELDS = (
    "job_id", "name", "status", "epoch", "epochs", "step", "total_steps", "loss", "val_loss", "val_bpc",
    "best_val_loss", "lr", "chars_per_s", "elapsed", "eta", "history", "error", "created_at", "finished_at", "version",
    "stopped", "settings",
)  # fmt: skip


@dataclass
class TrainingJob:
    job_id: str
    name: str
    spec: TrainSpec | None  # None for a job another replica runs (known from the shared store)
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
    loss_curve: LossCurve = field(default_factory=LossCurve)
    error: str | None = None
    stopped: str | None = None  # why it ended: budget | max_steps | epochs | early_stopping | cancelled
    settings: dict = field(default_factory=dict)  # every setting it uses, as chosen for its text and given
    created_at: str = field(default_factory=_now)
    finished_at: str | None = None
    version: int = 0  # bumped on every change, for the progress stream
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def snapshot(self) -> dict:
        """The job's status as the shared store keeps it (never its training text)."""
        return {**{k: getattr(self, k) for k in STATUS_FIELDS}, "loss_curve": list(self.loss_curve.points)}

    @classmethod
    def from_snapshot(cls, data: dict) -> TrainingJob:
        """A job another replica runs, as its latest published status says."""
        job = cls(spec=None, **{k: data[k] for k in STATUS_FIELDS if k in data})
        job.loss_curve.points = list(data.get("loss_curve", []))
        return job

    def record(self, p: Progress) -> None:
        """Takes in one progress report of the training loop."""
        self.epoch, self.step, self.total_steps, self.loss = p.epoch, p.step, p.total_steps, p.loss
        self.lr, self.chars_per_s, self.elapsed, self.eta = p.lr, p.chars_per_s, p.elapsed, p.eta
        self.loss_curve.add(p.step, p.recent_loss if p.recent_loss is not None else p.loss, p.elapsed)
        if p.evaluation is not None:
            self._record_evaluation(p.evaluation)
        self.version += 1

    def _record_evaluation(self, e: Evaluation) -> None:
        self.val_loss, self.val_bpc = e.val_loss, e.val_bpc
        if e.val_loss is not None and (self.best_val_loss is None or e.val_loss < self.best_val_loss):
            self.best_val_loss = e.val_loss
        self.history.append(
            {
                "step": e.step,
                "epoch": e.epoch,
                "train_loss": e.train_loss,
                "val_loss": e.val_loss,
                "val_bpc": e.val_bpc,
                "elapsed": round(e.elapsed, 3),
                "sample": e.sample,
            }
        )


class TrainingJobs:
    """The job registry: at most one job runs; the last `max_kept` finished ones are remembered."""

    def __init__(
        self,
        store: ModelStore,
        device: torch.device,
        metrics: Metrics,
        max_kept: int,
        on_trained: Callable[[Checkpoint], object],
    ):
        self.store = store
        self.device = device
        self.metrics = metrics
        self.max_kept = max_kept
        self.on_trained = on_trained  # called with the saved model of a job that asked to activate it
        self._jobs: OrderedDict[str, TrainingJob] = OrderedDict()
        self._lock = threading.Lock()
        self._running: TrainingJob | None = None
        self._thread: threading.Thread | None = None
        self.board = JobBoard(store.root)  # what replicas sharing the store see of jobs

    def submit(self, spec: TrainSpec) -> TrainingJob:
        """Checks what can be checked up front, then starts the job (409 while another runs)."""
        self._check(spec)
        with self._lock:
            if self._running is not None and not self._running.done:
                raise Conflict(f"training job {self._running.job_id} is still running; one job runs at a time")
            if self._thread is not None:  # a job reported finished may still be releasing its slot (ms)
                self._thread.join(FINISHING_SECONDS)
            job = TrainingJob(
                job_id=uuid.uuid4().hex,
                name=spec.name,
                spec=spec,
                epochs=spec.train_config().epochs,
                settings=spec.settings(),
            )
            self.board.acquire(job.job_id)  # one job across every replica of the store
            self._publish(job)
            self._jobs[job.job_id] = job
            while len(self._jobs) > self.max_kept:
                old, _ = self._jobs.popitem(last=False)
                self.board.forget(old)
            self._running = job
            self._thread = threading.Thread(target=self._run, args=(job,), name=f"train-{job.job_id[:8]}")
            self._thread.start()
        return job

    def _check(self, spec: TrainSpec) -> None:
        try:
            exists = self.store.exists(spec.name)
        except InvalidModelName as exc:
            raise InvalidInput(str(exc), "name") from None
        try:
            if spec.resume_from is not None and not self.store.exists(spec.resume_from):
                raise NotFound(f"no model named {spec.resume_from!r} to resume from", "resume_from")
        except InvalidModelName as exc:
            raise InvalidInput(str(exc), "resume_from") from None
        if spec.corpus_chars is not None and spec.corpus_chars < MIN_CORPUS_CHARS:
            # (a short text is read as fewer streams, with a smaller validation split or none)
            raise InvalidInput(
                f"corpus: {spec.corpus_chars} characters is too short to train on (at least {MIN_CORPUS_CHARS})",
                "corpus" if spec.corpus is not None else "corpus_id",
            )
        if exists and not spec.overwrite and spec.resume_from != spec.name:
            raise Conflict(f"a model named {spec.name!r} already exists; set overwrite to replace it", "name")

    def get(self, job_id: str) -> TrainingJob:
        """A job of this replica, or one another replica of the store runs or ran."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        published = self.board.read(job_id)
        if published is None:
            raise NotFound(f"no training job {job_id!r}", "job_id")
        return TrainingJob.from_snapshot(published)

    def cancel(self, job_id: str) -> TrainingJob:
        """Stops a job within a second or two, whichever replica runs it."""
        job = self.get(job_id)
        if not job.done:
            if job.spec is not None:
                job.cancel.set()
            else:
                self.board.request_cancel(job_id)
        return job

    def user_of(self, model_name: str) -> str | None:
        """The running job that reads or writes this model, if any (for refusing its deletion)."""
        job = self._running
        if job is not None and not job.done and job.spec and model_name in (job.spec.name, job.spec.resume_from):
            return f"training job {job.job_id}"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Cancels the running job and waits for its thread."""
        job = self._running
        if job is not None:
            job.cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_progress(self, job: TrainingJob, p: Progress) -> None:
        job.record(p)
        if p.total_steps:
            self.metrics.training_progress.set(p.step / p.total_steps)

    def _run(self, job: TrainingJob) -> None:
        spec = job.spec
        assert spec is not None
        job.status = "running"
        job.version += 1
        log.info("training job %s started: model %r from %s", job.job_id, spec.name, spec.source)
        watching = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(job, watching), name=f"watch-{job.job_id[:8]}")
        watcher.start()
        try:
            trained, meta = run_training(
                spec, self.store, self.device, lambda p: self._on_progress(job, p), job.cancel.is_set
            )
            if spec.activate:
                self.store.set_active(spec.name)
                self.on_trained(Checkpoint(spec.name, trained.model, trained.vocab, meta or {}))
            job.status, job.stopped = "succeeded", trained.result.stopped
            _log_success(job, trained)
        except TrainingCancelled:
            job.status = job.stopped = "cancelled"
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
            job.loss_curve.flush(job.step, job.elapsed)
            job.finished_at = _now()
            job.version += 1
            watching.set()
            watcher.join()
            self._publish(job)
            self.board.release(job.job_id)
            self.metrics.training_jobs.labels(job.status).inc()
            self.metrics.training_progress.set(0)

    def _watch(self, job: TrainingJob, done: threading.Event, every: float = 1.0) -> None:
        """While a job runs: renews its lease, publishes its status when it changed, and takes in a
        cancel that another replica filed."""
        published = -1
        while not done.wait(every):
            try:
                self.board.renew(job.job_id)
                if job.version != published:
                    published = job.version
                    self._publish(job)
                if self.board.cancel_requested(job.job_id):
                    job.cancel.set()
            except OSError as exc:  # the store is unwell: the job itself goes on
                log.warning("training job %s: could not update the shared store: %s", job.job_id, exc)

    def _publish(self, job: TrainingJob) -> None:
        try:
            self.board.publish(job.snapshot())
        except OSError as exc:
            log.warning("training job %s: could not publish its status: %s", job.job_id, exc)


def _log_success(job: TrainingJob, trained: Trained) -> None:
    r = trained.result
    log.info(
        "training job %s succeeded: %d steps in %.1fs, best validation loss %s",
        job.job_id,
        r.steps,
        r.seconds,
        r.best_val_loss,
    )
