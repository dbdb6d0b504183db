"""One training run from a request or the command line to a saved checkpoint: shared by jobs and the CLI."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from app.lm import default
from app.lm.model import ARCHITECTURE
from app.lm.store import ModelStore
from app.lm.train import Progress, Resume, TrainConfig, Trained, train_on_text

log = logging.getLogger(__name__)

MODEL_FIELDS = ARCHITECTURE  # what a caller chooses of a model (ModelConfig's fields but vocab_size)
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


@dataclass
class TrainSpec:
    """What to train: the text, the architecture and the settings. Unset (None) settings take the
    defaults for the kind of text: the tutorial's for sentences, the recommended ones for a corpus."""

    name: str
    corpus: str | None = None
    corpus_file: Path | None = None
    corpus_file_chars: int | None = None
    sentences: list[str] | None = None
    resume_from: str | None = None
    activate: bool = False
    overwrite: bool = False
    options: dict = field(default_factory=dict)  # any of MODEL_FIELDS and TRAIN_FIELDS

    @property
    def corpus_chars(self) -> int | None:
        return len(self.corpus) if self.corpus is not None else self.corpus_file_chars

    @property
    def source(self) -> str:
        return "sentences" if self.sentences is not None else "corpus"

    def recommended(self) -> tuple[dict, TrainConfig]:
        """The settings chosen for this text: the tutorial's for sentences; for a corpus, ones that
        fit its size (default.corpus_settings). Settings the caller gives win over these."""
        if self.sentences is not None:
            return dict(default.SENTENCE_MODEL), default.SENTENCE_TRAIN
        return default.corpus_settings(self.corpus_chars or 0)

    def architecture(self) -> dict:
        base = self.recommended()[0]
        base.update({k: v for k, v in self.options.items() if k in MODEL_FIELDS and v is not None})
        return base

    def train_config(self) -> TrainConfig:
        base = self.recommended()[1]
        return replace(base, **{k: v for k, v in self.options.items() if k in TRAIN_FIELDS and v is not None})

    def settings(self) -> dict:
        """Every setting the run uses, as chosen and overridden: what the job and checkpoint report."""
        chosen = {"size_class": default.size_class(self.corpus_chars or 0) if self.sentences is None else None}
        return {**chosen, **self.architecture(), **self.train_config().to_json()}


def read_corpus(spec: TrainSpec) -> str | None:
    if spec.corpus_file is not None:
        return spec.corpus_file.read_text(encoding="utf-8")
    return spec.corpus


def run_training(
    spec: TrainSpec,
    store: ModelStore,
    device: torch.device,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    save: bool = True,
    report_every: int = 1,
) -> tuple[Trained, dict | None]:
    """Trains and (on rank 0, if `save`) saves. Returns the trained model and its metadata."""
    config = spec.train_config()
    resume = None
    if spec.resume_from is not None:
        checkpoint = store.load(spec.resume_from, device)
        resume = Resume(
            checkpoint.model,
            checkpoint.vocab,
            store.load_optimizer_state(spec.resume_from, device),
            int(checkpoint.meta.get("step", 0)),
        )
    corpus = read_corpus(spec)
    trained = train_on_text(
        sentences=spec.sentences,
        corpus=corpus,
        config=config,
        device=device,
        on_progress=on_progress,
        should_stop=should_stop,
        resume=resume,
        report_every=report_every,
        **spec.architecture(),
    )
    result = trained.result
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if not save or rank != 0:
        return trained, None
    training = {
        "source": spec.source,
        "size_class": spec.settings()["size_class"],
        "resumed_from": spec.resume_from,
        **config.to_json(),
        "corpus_chars": trained.corpus_chars,
        "train_chars": trained.train_chars,
        "val_chars": trained.val_chars,
    }
    training.update(text_description(sentences=spec.sentences, corpus=corpus))
    metrics = {
        "final_loss": result.final_loss,
        "best_val_loss": result.best_val_loss,
        "best_val_bpc": result.best_val_loss / math.log(2) if result.best_val_loss is not None else None,
        "best_step": result.best_step,
        "steps": result.steps,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "stopped": result.stopped,
    }
    meta = store.save(
        spec.name,
        trained.model,
        trained.vocab,
        training=training,
        metrics=metrics,
        optimizer_state=result.optimizer_state,
        step=result.steps,
    )
    return trained, meta


TEXT_KEYS = ("sentences", "corpus")  # training text: never published, only described


def describe_training(training: dict) -> dict:
    """A checkpoint's training record without its training text: the settings, the counts and a
    SHA-256 of the text. Applied on read, so checkpoints written before it (which kept the
    sentences) are covered too, without rewriting files that replicas share."""
    out = {k: v for k, v in training.items() if k not in TEXT_KEYS}
    sentences = training.get("sentences")
    if isinstance(sentences, list) and "text_sha256" not in out:
        out.update(text_description(sentences=[str(s) for s in sentences]))
    return out


def text_description(*, sentences: list[str] | None = None, corpus: str | None = None) -> dict:
    """What a checkpoint keeps of its training text: how many sentences, and the text's SHA-256
    (enough to tell which text a model was trained on, without publishing it)."""
    if sentences is not None:
        digest = hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()
        return {"sentences_count": len(sentences), "text_sha256": digest}
    if corpus is not None:
        return {"text_sha256": hashlib.sha256(corpus.encode("utf-8")).hexdigest()}
    return {}
