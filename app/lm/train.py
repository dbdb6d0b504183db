"""The training loop: batches of (input, target) ids -> a trained CharRNN. Knows nothing of HTTP.

Runs alone or under torchrun (DistributedDataParallel: gloo on CPU, nccl on CUDA), where every
rank reads its own streams of the corpus and only rank 0 reports.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from app.lm import data
from app.lm.device import fast_bf16
from app.lm.generate import generate
from app.lm.model import CharRNN, ModelConfig
from app.lm.sampling import SamplingParams
from app.lm.score import ScoringCancelled, mean_loss
from app.lm.settings import setting
from app.lm.vocab import UNK_INDEX, Vocab


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(100, "passes over the data (an upper bound when a step or time budget is set)", ge=1)
    learning_rate: float = setting(0.01, "peak AdamW step size (the tutorial's lr)", gt=0.0, le=10.0)
    batch_size: int = setting(64, "sequences (or parallel corpus streams) per step", ge=1, le=4096)
    seq_len: int = setting(100, "window length on a corpus; the state carries across windows", ge=1, le=4096)
    seed: int = setting(0, "fixes the initial weights, shuffling and dropout", ge=0, le=2**63 - 1)
    grad_clip: float = setting(5.0, "largest global gradient norm; 0 turns clipping off", ge=0.0)
    max_steps: int = setting(0, "stop after this many optimizer steps; 0 = no limit", ge=0)
    max_seconds: float = setting(0.0, "stop after this much wall-clock time; 0 = no limit", ge=0.0)
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up", ge=0, le=1_000_000)
    lr_schedule: str = setting(
        "constant", "learning rate after warm-up: constant, or cosine decay to min_lr_ratio over the budget",
        choices=("constant", "cosine"),
    )  # fmt: skip
    min_lr_ratio: float = setting(0.1, "floor of the cosine decay, as a share of learning_rate", ge=0.0, le=1.0)
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay", ge=0.0, le=10.0)
    val_fraction: float = setting(0.0, "share of a corpus held out at its end for validation", ge=0.0, le=0.5)
    eval_interval: int = setting(0, "steps between validations; 0 = once per epoch", ge=0)
    eval_streams: int = setting(
        8, "parallel pieces the periodic validation reads (the final one reads 1)", ge=1, le=1024
    )
    patience: int = setting(0, "stop after this many validations without improvement; 0 = never", ge=0)
    unk_dropout: float = setting(
        0.0, "share of input characters replaced by UNK, so the model copes with unseen ones", ge=0.0, lt=1.0
    )
    min_char_count: int = setting(1, "characters seen fewer times map to UNK", ge=1)
    precision: str = setting(
        "fp32",
        "matrix products in training: fp32, bf16 (autocast; weights stay float32) or auto (bf16 where native)",
        choices=("fp32", "bf16", "auto"),
    )
    ema_decay: float = setting(
        0.0, "validate and keep an exponential moving average of the weights (e.g. 0.998); 0 = off", ge=0.0, lt=1.0
    )

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("lr_schedule must be constant or cosine")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError("precision must be fp32, bf16 or auto")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Evaluation:
    step: int
    epoch: int
    train_loss: float
    val_loss: float | None
    val_bpc: float | None
    elapsed: float
    sample: str | None = None  # a short text the model wrote at this evaluation (see write_sample)


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float  # mean training loss since the last validation
    lr: float
    chars_per_s: float
    elapsed: float
    eta: float | None
    evaluation: Evaluation | None = None  # set on the steps that validated
    recent_loss: float | None = None  # mean training loss of the steps since the previous report


@dataclass
class TrainResult:
    final_loss: float
    steps: int
    epochs: int
    seconds: float
    best_val_loss: float | None = None
    best_step: int | None = None
    stopped: str = "budget"  # why it stopped: budget (time) | max_steps | epochs | early_stopping
    history: list[Evaluation] = field(default_factory=list)
    optimizer_state: dict | None = None
    first_loss: float | None = None  # of this run's first step: the start of its learning curve


class TrainingCancelled(Exception):
    """should_stop() turned true: the job was asked to stop."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """Under DDP every rank must stop together: any rank's 'stop' stops all."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging).

    The averaged weights sit in a flatter part of the loss surface than the last step's: they
    usually validate better and generalise better to text unlike the training corpus. Early
    on the decay is lowered (as TensorFlow's ExponentialMovingAverage does with num_updates)
    so the average is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block, its own weights after it."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], own)


def lr_at(config: TrainConfig, progress: float, step: int) -> float:
    """Linear warm-up, then constant or cosine decay by the share of the budget used."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.learning_rate
    floor = config.learning_rate * config.min_lr_ratio
    return floor + (config.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def budget_used(config: TrainConfig, step: int, total_steps: int, started: float) -> float:
    """Share of the run's budget spent after `step` steps: of its steps or, if larger, of its time."""
    used = step / total_steps if total_steps else 0.0
    if config.max_seconds:
        used = max(used, (time.monotonic() - started) / config.max_seconds)
    return used


def stop_reason(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int, started: float) -> str | None:
    """Why the run ends after `step` steps, if it does: its time budget, its step limit or its epochs."""
    if config.max_seconds and time.monotonic() - started >= config.max_seconds:
        return "budget"
    if step >= total_steps:
        return "max_steps" if config.max_steps and config.max_steps < config.epochs * steps_per_epoch else "epochs"
    return None


def _asked_to_stop(should_stop: Callable[[], bool] | None) -> bool:
    return should_stop is not None and should_stop()


def hide_characters(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Replaces a random `share` of the input ids by UNK (TrainConfig.unk_dropout)."""
    if share > 0:
        mask = torch.rand(x.shape, generator=generator, device=x.device) < share
        x = x.masked_fill(mask, UNK_INDEX)
    return x


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    state: torch.Tensor | None,
    *,
    lr: float,
    config: TrainConfig,
    bf16: bool,
    stateful: bool,
    step_number: int,
) -> tuple[float, torch.Tensor | None]:
    """One optimizer step on inputs x (B, T) and targets y (B, T). Like the model's forward(),
    returns the loss with the recurrent state: the next window starts from it if `stateful`.

    `net` is the model or its DistributedDataParallel wrapper; `step_number` names this step
    if its loss is not finite, which raises TrainingDiverged before any weight changes.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if state is not None and (not stateful or state.shape[1] != x.shape[0]):
        state = None  # sentences start afresh, and a shorter last batch cannot continue the streams
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, state = net(x, state)  # (B, T, V)
    state = state.detach().float() if stateful else None
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"loss became {loss_value} at step {step_number}")
    loss.backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
    optimizer.step()
    return loss_value, state


@dataclass
class RunningLoss:
    """The mean training loss since the last validation."""

    total: float = 0.0
    count: int = 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.count += 1

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


# A sample of the model's text at an evaluation, so a person watching a job sees it learn to write:
# short, at one fixed seed (the differences between samples are what the model learned), and at most
# one every SAMPLE_INTERVAL seconds (a sentence job validates every step), but always at the last.
SAMPLE_CHARS = 120
SAMPLE_TEMPERATURE = 0.8
SAMPLE_SEED = 0
SAMPLE_INTERVAL = 1.0


def sample_start(vocab: Vocab, text: str) -> str:
    """Where samples start: a newline where the text has them (a line's start), else its first character."""
    return "\n" if vocab.encode("\n")[0] != UNK_INDEX else text[:1]


def write_sample(model: CharRNN, vocab: Vocab, start: str) -> str:
    """SAMPLE_CHARS characters the model writes after `start` (which is shown, unless a newline)."""
    params = SamplingParams(max_new_chars=SAMPLE_CHARS, temperature=SAMPLE_TEMPERATURE)
    [seq] = generate(model, vocab, start, params, seed=SAMPLE_SEED)
    return ("" if start == "\n" else start) + seq.text


def evaluate(
    model: CharRNN,
    val_ids: torch.Tensor | None,
    config: TrainConfig,
    *,
    step: int,
    epoch: int,
    train_loss: float,
    started: float,
    should_stop: Callable[[], bool] | None = None,
) -> Evaluation:
    """Validates the model's current weights on `val_ids` (when there are any to read)."""
    val_loss = None
    if val_ids is not None and len(val_ids) > 1:
        try:
            total, count = mean_loss(model, val_ids, streams=config.eval_streams, should_stop=should_stop)
        except ScoringCancelled:
            raise TrainingCancelled() from None
        val_loss = total / max(count, 1)
    return Evaluation(
        step=step,
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_bpc=val_loss / math.log(2) if val_loss is not None else None,
        elapsed=time.monotonic() - started,
    )


@dataclass
class Best:
    """The checkpoint that validated best so far (on the training loss when there is no
    validation text), and how many validations since have failed to beat it."""

    loss: float = math.inf
    step: int | None = None
    model_state: dict | None = None
    optimizer_state: dict | None = None
    misses: int = 0  # validations since the best one; early stopping counts them

    def update(self, evaluation: Evaluation, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        score = evaluation.val_loss if evaluation.val_loss is not None else evaluation.train_loss
        if score < self.loss:  # a NaN score never counts as better
            self.loss, self.step = score, evaluation.step
            self.model_state = copy.deepcopy(model.state_dict())
            self.optimizer_state = copy.deepcopy(optimizer.state_dict())
            self.misses = 0
        else:
            self.misses += 1


def report(
    config: TrainConfig,
    *,
    epoch: int,
    step: int,
    total_steps: int,
    loss: float,
    lr: float,
    chars_per_s: float,
    elapsed: float,
    budget_used: float,
    evaluation: Evaluation | None,
    recent_loss: float | None = None,
) -> Progress:
    """A progress report; `step` and `total_steps` count from the run's first step, resumed or not."""
    return Progress(
        epoch=epoch,
        epochs=config.epochs,
        step=step,
        total_steps=total_steps,
        loss=loss,
        lr=lr,
        chars_per_s=chars_per_s,
        elapsed=elapsed,
        eta=elapsed * (1 - budget_used) / budget_used if budget_used > 0 else None,
        evaluation=evaluation,
        recent_loss=recent_loss,
    )


def train(
    model: CharRNN,
    batches: data.SentenceBatches | data.StreamBatches,
    config: TrainConfig,
    val_ids: torch.Tensor | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    optimizer_state: dict | None = None,
    start_step: int = 0,
    report_every: int = 1,
    sample: Callable[[CharRNN], str] | None = None,
) -> TrainResult:
    """Trains `model` in place; at the end it holds the weights with the best validation loss.

    `start_step` counts the steps of the run this one resumes: reports, the warm-up and the
    best step continue from it. `sample(model)`, where given, writes a short text at evaluations
    (at most one every SAMPLE_INTERVAL seconds, and at the last), carried by their reports.
    """
    rank, world = _world()
    device = model.fc.weight.device
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    total_steps = config.epochs * batches.steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    eval_interval = config.eval_interval or batches.steps_per_epoch
    dropout_gen = torch.Generator(device=device).manual_seed(config.seed + 7919 * rank)  # UNK masks
    average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    # emulated bfloat16 (no AVX512-BF16/AMX) is slower than float32: auto uses it only where native
    bf16 = config.precision == "bf16" or (config.precision == "auto" and fast_bf16(device))

    started = time.monotonic()
    step = epoch = 0  # this run's steps and epochs
    history: list[Evaluation] = []
    best = Best()
    running = RunningLoss()
    since_report = RunningLoss()  # the steps since the previous report: the job's loss curve
    last_sample = -math.inf
    stopped = "budget"
    last = False  # this step is the run's last
    loss = float("nan")
    first_loss = None
    last_report_t, last_report_step = started, 0
    model.train()
    while not last and epoch < config.epochs:
        epoch += 1
        state = None
        for x, y in batches.epoch():
            if _agree(_asked_to_stop(should_stop), world, device):
                raise TrainingCancelled()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = hide_characters(x, config.unk_dropout, dropout_gen)
            lr = lr_at(config, budget_used(config, step, total_steps, started), start_step + step)
            loss, state = train_step(
                net,
                optimizer,
                x,
                y,
                state,
                lr=lr,
                config=config,
                bf16=bf16,
                stateful=batches.stateful,
                step_number=start_step + step + 1,
            )
            if average is not None:
                average.update()
            step += 1
            if step == 1:
                first_loss = loss
            running.add(loss)
            since_report.add(loss)
            reason = stop_reason(config, step, total_steps, batches.steps_per_epoch, started)
            last = _agree(reason is not None, world, device)
            if last:
                stopped = reason or "budget"  # (another rank's reason: the time budget)

            evaluation = None
            if step % eval_interval == 0 or last:
                # validate (and keep) the averaged weights, when there are any
                with average.swapped_in() if average is not None else contextlib.nullcontext():
                    evaluation = evaluate(
                        model,
                        val_ids,
                        config,
                        step=start_step + step,
                        epoch=epoch,
                        train_loss=running.mean,
                        started=started,
                        should_stop=should_stop,
                    )
                    if sample is not None and rank == 0 and (last or time.monotonic() - last_sample >= SAMPLE_INTERVAL):
                        evaluation.sample = sample(model)
                        last_sample = time.monotonic()
                    history.append(evaluation)
                    best.update(evaluation, model, optimizer)
                model.train()
                if config.patience and best.misses >= config.patience:
                    stopped, last = "early_stopping", True

            if rank == 0 and on_progress is not None and (evaluation is not None or step % report_every == 0 or last):
                now = time.monotonic()
                chars = (step - last_report_step) * batches.chars_per_step * world
                progress = report(
                    config,
                    epoch=epoch,
                    step=start_step + step,
                    total_steps=start_step + total_steps,
                    loss=running.mean,
                    lr=lr,
                    chars_per_s=chars / max(now - last_report_t, 1e-9),
                    elapsed=now - started,
                    budget_used=budget_used(config, step, total_steps, started),
                    evaluation=evaluation,
                    recent_loss=since_report.mean,
                )
                on_progress(progress)
                last_report_t, last_report_step = now, step
                since_report = RunningLoss()
            if evaluation is not None:
                running = RunningLoss()
            if last:
                break

    if best.model_state is not None:
        model.load_state_dict(best.model_state)
    model.eval()
    has_val = val_ids is not None and len(val_ids) > 1
    return TrainResult(
        final_loss=loss,
        steps=start_step + step,
        epochs=epoch,
        seconds=time.monotonic() - started,
        best_val_loss=best.loss if has_val and best.model_state is not None else None,
        best_step=best.step,
        stopped=stopped,
        history=history,
        optimizer_state=best.optimizer_state if best.optimizer_state is not None else optimizer.state_dict(),
        first_loss=first_loss,
    )


def build_model(config: ModelConfig, seed: int, device: torch.device | str = "cpu") -> CharRNN:
    """Initial weights depend only on `seed`, whatever else uses the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CharRNN(config)
    return model.to(device)


@dataclass
class Trained:
    model: CharRNN
    vocab: Vocab
    model_config: ModelConfig
    result: TrainResult
    corpus_chars: int = 0
    train_chars: int = 0
    val_chars: int = 0


@dataclass
class Resume:
    """A stored checkpoint to continue training from."""

    model: CharRNN
    vocab: Vocab
    optimizer_state: dict | None
    step: int  # optimizer steps it had taken


def train_on_text(
    *,
    sentences: list[str] | None = None,
    corpus: str | None = None,
    config: TrainConfig = TrainConfig(),
    device: torch.device | str = "cpu",
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: Resume | None = None,
    report_every: int = 1,
    **architecture: Any,
) -> Trained:
    """From raw text to a trained model: builds (or, with `resume`, reuses) the vocabulary and the
    model, makes the batches and the validation split, then trains.

    `architecture` is any of ModelConfig's fields but vocab_size (model.ARCHITECTURE); with
    `resume`, training continues from a stored checkpoint with its vocabulary and architecture.
    """
    if (sentences is None) == (corpus is None):
        raise ValueError("give exactly one of sentences or corpus")
    rank, world = _world()
    if resume is not None:
        model, vocab = resume.model.to(device), resume.vocab
        optimizer_state, start_step = resume.optimizer_state, resume.step
        model_config = model.config
    else:
        source = data.pad_sentences(sentences) if sentences is not None else cast(str, corpus)  # one of them
        vocab = Vocab.from_text(source, min_count=config.min_char_count)
        model_config = ModelConfig(vocab_size=vocab.size, **architecture)
        model = build_model(model_config, config.seed, device)
        optimizer_state, start_step = None, 0
    val_ids = None
    batches: data.SentenceBatches | data.StreamBatches
    if sentences is not None:
        inputs, targets = data.sentence_pairs(vocab, sentences)
        batches = data.SentenceBatches(inputs, targets, config.batch_size, config.seed)
        corpus_chars = sum(len(s) for s in sentences)
        train_chars = inputs.numel()
    else:
        assert corpus is not None  # exactly one of the two, checked above
        corpus_chars = len(corpus)
        ids = torch.tensor(vocab.encode(corpus), dtype=torch.long)
        train_ids, val_ids = data.split_validation(ids, config.val_fraction)
        batches = data.StreamBatches(train_ids, config.batch_size, config.seq_len, rank, world)
        train_chars = len(train_ids)
        if val_ids is not None and len(val_ids) < 2:
            val_ids = None
    if rank > 0:
        on_progress = None
    sample = None
    if on_progress is not None:  # someone follows the run: show them what the model writes
        start = sample_start(vocab, sentences[0] if sentences is not None else cast(str, corpus))
        sample = functools.partial(write_sample, vocab=vocab, start=start)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + rank)  # dropout masks
        result = train(
            model,
            batches,
            config,
            val_ids=val_ids,
            on_progress=on_progress,
            should_stop=should_stop,
            optimizer_state=optimizer_state,
            start_step=start_step,
            report_every=report_every,
            sample=sample,
        )
    return Trained(
        model=model,
        vocab=vocab,
        model_config=model_config,
        result=result,
        corpus_chars=corpus_chars,
        train_chars=train_chars,
        val_chars=len(val_ids) if val_ids is not None else 0,
    )
