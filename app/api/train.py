"""POST /train and GET /train/{job_id}: background training jobs."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServiceDep, SettingsDep
from app.errors import InvalidInput
from app.lm.train import TrainConfig
from app.schemas import ErrorResponse, TrainAccepted, TrainJobStatus, TrainRequest
from app.service import TrainingJob, TrainSpec

router = APIRouter(prefix="/train", tags=["training"])


def check_limits(req: TrainRequest, settings) -> None:
    text_chars = len(req.corpus) if req.corpus is not None else sum(len(s) for s in req.sentences)
    if text_chars > settings.max_corpus_chars:
        raise InvalidInput(f"the training text has more than {settings.max_corpus_chars} characters", "corpus")
    if req.hidden_size > settings.max_hidden_size:
        raise InvalidInput(f"hidden_size: at most {settings.max_hidden_size}", "hidden_size")
    if req.num_layers > settings.max_num_layers:
        raise InvalidInput(f"num_layers: at most {settings.max_num_layers}", "num_layers")
    if req.epochs > settings.max_epochs:
        raise InvalidInput(f"epochs: at most {settings.max_epochs}", "epochs")


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
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


@router.post(
    "",
    status_code=202,
    response_model=TrainAccepted,
    responses={409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Start a training job",
)
def start_training(req: TrainRequest, service: ServiceDep, settings: SettingsDep) -> TrainAccepted:
    """Trains a new model in the background while completions keep being served. Poll
    `GET /train/{job_id}`. On success the model is saved and, with `activate`, swapped in
    atomically. One job runs at a time: a second gets 409."""
    check_limits(req, settings)
    spec = TrainSpec(
        name=req.name,
        corpus=req.corpus,
        sentences=req.sentences,
        cell=req.cell,
        hidden_size=req.hidden_size,
        num_layers=req.num_layers,
        encoding=req.encoding,
        embedding_dim=req.embedding_dim,
        dropout=req.dropout,
        activate=req.activate,
        overwrite=req.overwrite,
        config=TrainConfig(
            epochs=req.epochs,
            learning_rate=req.learning_rate,
            batch_size=req.batch_size,
            seq_len=req.seq_len,
            seed=req.seed,
        ),
    )
    return TrainAccepted(job_id=service.submit_training(spec).job_id)


@router.get(
    "/{job_id}", response_model=TrainJobStatus, responses={404: {"model": ErrorResponse}}, summary="A job's progress"
)
def training_status(job_id: str, service: ServiceDep) -> TrainJobStatus:
    return job_status(service.get_job(job_id))
