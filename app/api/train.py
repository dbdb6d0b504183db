"""POST /train, GET /train/{job_id}, its progress stream and cancel: background training jobs."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request

from app.api.deps import CorporaDep, ServiceDep, SettingsDep
from app.api.docs import window_bound
from app.api.generation import event_stream
from app.api.routing import StrictJSONRoute
from app.api.schemas import ErrorResponse, TrainAccepted, TrainJobStatus, TrainRequest
from app.config import Settings
from app.errors import InvalidInput
from app.service.jobs import TrainingJob
from app.service.training import MODEL_FIELDS, TRAIN_FIELDS, TrainSpec

router = APIRouter(prefix="/train", tags=["training"], route_class=StrictJSONRoute)


def check_limits(req: TrainRequest, settings) -> None:
    """Bounds that depend on settings, checked before a job starts."""
    if req.corpus is not None and len(req.corpus) > settings.max_corpus_chars:
        raise InvalidInput(f"corpus: more than the limit of {settings.max_corpus_chars} characters", "corpus")
    if req.sentences is not None and sum(len(s) for s in req.sentences) > settings.max_corpus_chars:
        raise InvalidInput(f"sentences: more than the limit of {settings.max_corpus_chars} characters", "sentences")
    window = window_bound(settings)  # batch_size x seq_len stays within max_batch_chars (a memory bound)
    for name, limit in (
        ("hidden_size", settings.max_hidden_size),
        ("num_layers", settings.max_num_layers),
        ("epochs", settings.max_epochs),
        ("max_seconds", settings.max_train_seconds),
        ("batch_size", window),
        ("seq_len", window),
    ):
        value = getattr(req, name)
        if value is not None and value > limit:
            raise InvalidInput(f"{name}: at most {limit}", name)


def time_budget(spec: TrainSpec, settings: Settings) -> None:
    """Every job stops by CHARRNN_MAX_TRAIN_SECONDS, also one that set no budget of its own."""
    budget = spec.train_config().max_seconds
    if budget == 0 or budget > settings.max_train_seconds:
        spec.options["max_seconds"] = settings.max_train_seconds


def job_status(job: TrainingJob) -> TrainJobStatus:
    return TrainJobStatus(
        job_id=job.job_id,
        name=job.name,
        status=job.status,
        epoch=job.epoch,
        epochs=job.epochs,
        step=job.step,
        total_steps=job.total_steps,
        loss=job.loss,
        val_loss=job.val_loss,
        val_bpc=job.val_bpc,
        best_val_loss=job.best_val_loss,
        lr=job.lr,
        chars_per_s=job.chars_per_s,
        elapsed=round(job.elapsed, 3),
        eta=round(job.eta, 3) if job.eta is not None else None,
        history=list(job.history),
        loss_history=list(job.loss_curve.points),
        error=job.error,
        stopped=job.stopped,
        settings=job.settings,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


@router.post(
    "",
    status_code=202,
    response_model=TrainAccepted,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Start a training job",
)
def start_training(req: TrainRequest, service: ServiceDep, settings: SettingsDep, corpora: CorporaDep) -> TrainAccepted:
    """Trains a model in the background while completions keep being served. Follow it with
    `GET /train/{job_id}` or its event stream. On success the best checkpoint (by validation loss)
    is saved and, with `activate`, swapped in atomically. One job runs at a time: a second gets 409."""
    check_limits(req, settings)
    options = {k: getattr(req, k) for k in (*MODEL_FIELDS, *TRAIN_FIELDS) if hasattr(req, k)}
    spec = TrainSpec(
        name=req.name,
        corpus=req.corpus,
        corpus_file=corpora.path(req.corpus_id) if req.corpus_id is not None else None,
        corpus_file_chars=corpora.info(req.corpus_id)["chars"] if req.corpus_id is not None else None,
        sentences=req.sentences,
        resume_from=req.resume_from,
        activate=req.activate,
        overwrite=req.overwrite,
        options=options,
    )
    time_budget(spec, settings)
    return TrainAccepted(job_id=service.jobs.submit(spec).job_id)


@router.get(
    "/{job_id}", response_model=TrainJobStatus, responses={404: {"model": ErrorResponse}}, summary="A job's progress"
)
def training_status(job_id: str, service: ServiceDep) -> TrainJobStatus:
    """Status, step and total, epoch, training and validation loss, bits per character, speed,
    elapsed time, ETA, every validation so far (each with a sample of the model's text) and the
    training loss curve."""
    return job_status(service.jobs.get(job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=TrainJobStatus,
    responses={404: {"model": ErrorResponse}},
    summary="Stop a job",
)
def cancel_training(job_id: str, service: ServiceDep) -> TrainJobStatus:
    """Asks the job to stop; it does within a second (status `cancelled`) and saves nothing."""
    return job_status(service.jobs.cancel(job_id))


@router.get(
    "/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`data: {job status}` on every change"},
        404: {"model": ErrorResponse},
    },
    summary="A job's progress as Server-Sent Events",
)
async def training_events(job_id: str, request: Request, service: ServiceDep):
    """The job's status (as GET /train/{job_id}) each time it changes, then `data: [DONE]` once it ends."""
    service.jobs.get(job_id)  # 404 now rather than inside the stream

    async def events():
        seen = -1
        while True:
            job = service.jobs.get(job_id)  # a job another replica runs is read anew from the shared store
            version = job.version
            if version != seen:
                seen = version
                yield {"data": json.dumps(job_status(job).model_dump())}
                if job.done:
                    yield {"data": "[DONE]"}
                    return
            await asyncio.sleep(0.2)

    return event_stream(events())
