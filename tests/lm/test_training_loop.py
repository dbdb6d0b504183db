"""The real-corpus training loop: streams, validation, best checkpoint, early stopping, resume."""

import math

import pytest
import torch

from app.lm import data
from app.lm.model import ModelConfig
from app.lm.score import mean_loss
from app.lm.store import ModelStore
from app.lm.train import (
    Resume,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    build_model,
    lr_at,
    train,
    train_on_text,
)
from app.lm.vocab import Vocab

TEXT = "the quick brown fox jumps over the lazy dog. " * 60


def test_stream_batches_are_consecutive_windows_of_parallel_streams():
    ids = torch.arange(101)
    b = data.StreamBatches(ids, batch_size=4, seq_len=5)
    windows = list(b.epoch())
    assert b.steps_per_epoch == len(windows) == 5
    x0, y0 = windows[0]
    x1, _ = windows[1]
    assert x0.shape == (4, 5)
    assert torch.equal(y0, x0 + 1)  # targets are the next characters
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # window k+1 continues window k in every stream
    assert torch.equal(x0[:, 0], torch.tensor([0, 25, 50, 75]))


def test_ranks_read_disjoint_streams():
    ids = torch.arange(1001)
    r0 = data.StreamBatches(ids, batch_size=2, seq_len=10, rank=0, world=2)
    r1 = data.StreamBatches(ids, batch_size=2, seq_len=10, rank=1, world=2)
    assert set(r0.inputs.flatten().tolist()).isdisjoint(r1.inputs.flatten().tolist())


def test_validation_is_held_out_from_the_end():
    train_ids, val_ids = data.split_validation(torch.arange(100), 0.1)
    assert train_ids.tolist() == list(range(90)) and val_ids.tolist() == list(range(90, 100))
    train_ids, val_ids = data.split_validation(torch.arange(10), 0.05)  # short: two characters still
    assert len(val_ids) == 2 and len(train_ids) == 8
    assert len(data.split_validation(torch.arange(4), 0.05)[1]) == 0  # too short to hold any out


def test_a_short_corpus_is_read_as_fewer_streams_and_a_too_short_one_is_a_clear_error():
    batches = data.StreamBatches(torch.arange(10), batch_size=8, seq_len=4)
    assert batches.batch_size == 4 and batches.inputs.shape == (4, 2)
    with pytest.raises(ValueError, match="too short"):
        data.StreamBatches(torch.arange(2), batch_size=8, seq_len=4)


def test_corpus_training_reports_validation_and_keeps_the_best_weights():
    seen = []
    cfg = TrainConfig(
        epochs=6, batch_size=4, seq_len=32, learning_rate=0.01, val_fraction=0.1, eval_interval=5, lr_schedule="cosine"
    )
    trained = train_on_text(
        corpus=TEXT, cell="gru", hidden_size=32, encoding="embedding", config=cfg, on_progress=seen.append
    )
    r = trained.result
    evals = [p.evaluation for p in seen if p.evaluation is not None]
    assert evals and all(e.val_loss is not None and e.val_bpc == pytest.approx(e.val_loss / math.log(2)) for e in evals)
    assert r.best_val_loss == min(e.val_loss for e in evals)
    assert evals[-1].val_loss < evals[0].val_loss
    # the model handed back holds the best weights: validating it again gives the best loss
    val_ids = torch.tensor(trained.vocab.encode(TEXT[len(TEXT) - trained.val_chars :]))
    total, count = mean_loss(trained.model, val_ids, streams=cfg.eval_streams)
    assert total / count == pytest.approx(r.best_val_loss, rel=1e-5)
    assert all(p.chars_per_s > 0 and p.elapsed >= 0 for p in seen)
    assert seen[-1].eta == pytest.approx(0.0, abs=1e-6)


def test_early_stopping_after_patience_without_improvement():
    cfg = TrainConfig(
        epochs=50, batch_size=4, seq_len=16, learning_rate=1e-12, val_fraction=0.1, eval_interval=1, patience=2
    )
    r = train_on_text(corpus=TEXT, hidden_size=8, config=cfg).result
    assert r.stopped == "early_stopping"
    assert r.steps == 3  # one evaluation sets the best, two more fail to beat it


def test_a_non_finite_loss_fails_the_run():
    vocab = Vocab.from_text(TEXT)
    model = build_model(ModelConfig(vocab_size=vocab.size, hidden_size=8), seed=0)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    batches = data.StreamBatches(torch.tensor(vocab.encode(TEXT)), 4, 16)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(model, batches, TrainConfig(epochs=1))


def test_unk_dropout_hides_inputs():
    # pairs "ab" or "cd" in random order: the second of a pair follows from the first, if it is seen
    gen = torch.Generator().manual_seed(0)
    text = "".join("ab" if bit else "cd" for bit in torch.randint(0, 2, (600,), generator=gen).tolist())
    kw = dict(corpus=text, hidden_size=16, encoding="embedding")
    cfg = TrainConfig(epochs=30, batch_size=4, seq_len=20, learning_rate=0.05)
    seen = train_on_text(**kw, config=cfg).result.history[-1].train_loss
    hidden = train_on_text(**kw, config=TrainConfig(**{**cfg.to_json(), "unk_dropout": 0.95})).result
    assert seen < 0.45  # ~ln(2)/2: only the first of each pair is a coin toss
    assert hidden.history[-1].train_loss > 0.55  # inputs replaced by UNK: the second is a guess too


def test_warmup_and_cosine_schedule():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 0.0, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 0.5, 50) == pytest.approx(0.55)
    assert lr_at(cfg, 1.0, 100) == pytest.approx(0.1)


def test_resume_continues_from_the_saved_step_with_the_saved_vocabulary(tmp_path):
    store = ModelStore(tmp_path)
    cfg = TrainConfig(epochs=2, batch_size=4, seq_len=16, val_fraction=0.1)
    first = train_on_text(corpus=TEXT, cell="lstm", hidden_size=16, config=cfg)
    store.save("m", first.model, first.vocab, optimizer_state=first.result.optimizer_state, step=first.result.steps)
    ckpt = store.load("m")
    opt = store.load_optimizer_state("m")
    assert opt is not None and opt["state"]
    resumed = train_on_text(
        corpus=TEXT + " ZZZ",  # a new character maps to UNK: the vocabulary stays the stored one
        config=cfg,
        resume=Resume(ckpt.model, ckpt.vocab, opt, ckpt.meta["step"]),
    )
    assert resumed.vocab == first.vocab
    assert resumed.result.history[0].step > first.result.steps  # step numbers continue
    assert resumed.result.steps > first.result.steps
    assert resumed.model_config == first.model_config


def test_cancel_during_corpus_training():
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingCancelled):
        train_on_text(
            corpus=TEXT, hidden_size=8, config=TrainConfig(epochs=1000, batch_size=2, seq_len=8), should_stop=stop
        )


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_bf16_precision_trains(precision):
    cfg = TrainConfig(epochs=3, batch_size=4, seq_len=32, learning_rate=0.01, precision=precision)
    r = train_on_text(corpus=TEXT, cell="lstm", hidden_size=32, encoding="embedding", config=cfg).result
    assert r.history[-1].train_loss < r.history[0].train_loss


def test_weight_average_follows_the_weights_and_swaps_in_only_inside_its_block():
    from app.lm.train import WeightAverage

    layer = torch.nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.5)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    for _ in range(50):  # the early-update ramp keeps the decay low, then 0.5 pulls the average along
        average.update()
    moved = layer.weight.detach().clone()
    torch.testing.assert_close(average.average[0], moved, rtol=0, atol=1e-6)
    with torch.no_grad():
        layer.weight.add_(4.0)
    average.update()  # halfway to the new weights
    with average.swapped_in():
        torch.testing.assert_close(layer.weight, moved + 2.0)
    torch.testing.assert_close(layer.weight, start + 5.0)  # its own weights back


def test_training_with_a_weight_average_validates_and_keeps_the_averaged_weights():
    cfg = TrainConfig(epochs=4, batch_size=4, seq_len=32, learning_rate=0.01, val_fraction=0.1, ema_decay=0.9)
    trained = train_on_text(corpus=TEXT, cell="lstm", hidden_size=32, encoding="embedding", config=cfg)
    r = trained.result
    assert r.best_val_loss is not None and r.best_val_loss < r.history[0].val_loss
    # the kept weights are the ones that validated best: scoring them again gives that loss
    val_ids = torch.tensor(trained.vocab.encode(TEXT))[-trained.val_chars :]
    total, count = mean_loss(trained.model, val_ids, streams=cfg.eval_streams)
    assert total / count == pytest.approx(r.best_val_loss, rel=1e-5)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or auto"):
        TrainConfig(precision="fp16")


def test_progress_is_reported_every_few_steps_at_each_validation_and_at_the_end():
    seen = []
    cfg = TrainConfig(epochs=50, batch_size=4, seq_len=16, max_steps=10, eval_interval=4)
    r = train_on_text(corpus=TEXT, hidden_size=8, config=cfg, on_progress=seen.append, report_every=3).result
    assert [p.step for p in seen] == [3, 4, 6, 8, 9, 10]
    assert [p.step for p in seen if p.evaluation is not None] == [e.step for e in r.history] == [4, 8, 10]
    assert all(p.loss == p.evaluation.train_loss for p in seen if p.evaluation is not None)
    assert r.stopped == "max_steps" and r.steps == 10 and seen[-1].total_steps == 10


def test_best_keeps_the_lowest_score_and_counts_the_validations_since():
    from app.lm.train import Best, Evaluation

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    best = Best()

    def validated(step, val_loss, train_loss=1.0):
        best.update(Evaluation(step, 1, train_loss, val_loss, None, 0.0), model, optimizer)

    validated(1, 2.0)
    with torch.no_grad():
        model.weight.add_(1.0)  # the kept weights are a copy, not the live ones
    validated(2, 3.0)
    validated(3, float("nan"))  # never better
    assert (best.loss, best.step, best.misses) == (2.0, 1, 2)
    assert not torch.equal(best.model_state["weight"], model.weight)
    validated(4, None, train_loss=0.5)  # without validation text the training loss is the score
    assert (best.loss, best.step, best.misses) == (0.5, 4, 0)
