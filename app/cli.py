"""The `charrnn` command: serve the API, or train, complete and score with the same code and model_store.

Training also runs under torchrun (DistributedDataParallel), for example
`torchrun --nproc_per_node=2 -m app train --corpus FILE --name NAME`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import fields
from pathlib import Path

from app.config import get_settings
from app.lm.device import DeviceUnavailable, resolve_device

log = logging.getLogger("app")


def _setup_logging(level: str) -> None:
    from app.logs import configure_logging

    configure_logging(level, get_settings().log_json)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    _setup_logging(settings.log_level)
    try:  # fail before uvicorn starts, with one line rather than a lifespan traceback
        resolve_device(settings.device)
    except DeviceUnavailable as exc:
        log.error("cannot start: CHARRNN_DEVICE=%s: %s", settings.device, exc)
        return 2
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        access_log=False,  # app.access logs one line per request, with its request id
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def _store(args: argparse.Namespace):
    from app.lm.store import ModelStore

    return ModelStore(args.model_store or get_settings().model_store)


def _device(args: argparse.Namespace):
    spec = args.device or get_settings().device
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and spec in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.device("cuda", int(local_rank))
    return resolve_device(spec)


def _init_distributed(device) -> tuple[int, int]:
    """Under torchrun: join the process group (nccl on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(args: argparse.Namespace) -> int:
    import torch.distributed as dist
    from tqdm import tqdm

    from app.training import MODEL_FIELDS, TRAIN_FIELDS, TrainSpec, run_training

    _setup_logging(get_settings().log_level)
    device = _device(args)
    rank, world = _init_distributed(device)
    options = {k: getattr(args, k) for k in (*MODEL_FIELDS, *TRAIN_FIELDS) if getattr(args, k, None) is not None}
    store = _store(args)
    spec = TrainSpec(
        name=args.name,
        corpus_file=Path(args.corpus) if args.corpus else None,
        sentences=args.sentence or None,
        resume_from=args.resume_from,
        options=options,
    )
    if store.exists(args.name) and not args.overwrite and args.resume_from != args.name:
        print(f"a model named {args.name!r} already exists in {store.root}; pass --overwrite", file=sys.stderr)
        return 1
    bar = tqdm(total=None, unit="step", disable=rank != 0 or args.quiet, dynamic_ncols=True)

    def on_progress(p) -> None:
        bar.total = p.total_steps
        bar.n = p.step
        post = {"loss": f"{p.loss:.3f}", "chars/s": f"{p.chars_per_s:.0f}"}
        if p.evaluation is not None and p.evaluation.val_loss is not None:
            post["val"] = f"{p.evaluation.val_loss:.3f}"
            post["bpc"] = f"{p.evaluation.val_bpc:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    try:
        trained, meta = run_training(spec, store, device, on_progress, report_every=10)
    finally:
        bar.close()
        if world > 1:
            dist.destroy_process_group()
    if rank == 0:
        if args.activate:
            store.set_active(args.name)
        r = trained.result
        summary = {
            "name": args.name,
            "model_store": str(store.root),
            "steps": r.steps,
            "seconds": round(r.seconds, 2),
            "best_val_loss": r.best_val_loss,
            "best_val_bpc": r.best_val_loss / math.log(2) if r.best_val_loss is not None else None,
            "stopped": r.stopped,
            "train_loss_first": r.history[0].train_loss if r.history else None,
            "train_loss_last": r.history[-1].train_loss if r.history else None,
            "world_size": world,
            "active": args.activate,
        }
        print(json.dumps(summary))
    return 0


def _load(args: argparse.Namespace):
    store = _store(args)
    name = args.model or store.active_name()
    if name is None:
        raise SystemExit(f"no active model in {store.root}; pass --model or start the service once")
    return store.load(name, _device(args))


def complete(args: argparse.Namespace) -> int:
    from app.lm.device import decode_dtype
    from app.lm.generate import SamplingParams, generate

    checkpoint = _load(args)
    params = SamplingParams(
        max_new_chars=args.max_new_chars,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=tuple(args.stop),
    )
    # the same decoding precision as the service (CHARRNN_DECODE_PRECISION), so both give the same text
    dtype = decode_dtype(
        get_settings().decode_precision, checkpoint.model.fc.weight.device, checkpoint.model.config.hidden_size
    )
    seqs = generate(checkpoint.model, checkpoint.vocab, args.prefix, params, n=args.n, seed=args.seed, dtype=dtype)
    for seq in seqs:
        print(args.prefix + seq.text)
    return 0


def score(args: argparse.Namespace) -> int:
    from app.lm.score import score_text

    checkpoint = _load(args)
    text = Path(args.file).read_text(encoding="utf-8") if args.file else args.text
    s = score_text(checkpoint.model, checkpoint.vocab, text)
    print(json.dumps({"model": checkpoint.name, **s.__dict__}))
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from app.lm.train import TrainConfig

    p.add_argument("--cell", choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--encoding", choices=["one_hot", "embedding"])
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--dropout", type=float)
    for f in fields(TrainConfig):
        kind = type(f.default)
        p.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, help=f"default for a corpus: see README ({kind.__name__})"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to let requests finish on SIGTERM")
    p.set_defaults(func=serve)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-store", help="default: CHARRNN_MODEL_STORE")
    common.add_argument("--device", help="default: CHARRNN_DEVICE")

    p = sub.add_parser("train", parents=[common], help="train a model into the model store")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="a UTF-8 text file")
    source.add_argument("--sentence", action="append", help="a sentence (repeat), padded as in the tutorial")
    p.add_argument("--name", required=True)
    p.add_argument("--resume-from", help="continue training this stored model")
    p.add_argument("--activate", action="store_true", help="make it the active model")
    p.add_argument("--overwrite", action="store_true", help="replace a stored model of the same name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_training_options(p)
    p.set_defaults(func=train)

    p = sub.add_parser("complete", parents=[common], help="complete a prefix")
    p.add_argument("prefix")
    p.add_argument("--model", help="default: the active model")
    p.add_argument("--max-new-chars", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("-n", type=int, default=1)
    p.set_defaults(func=complete)

    p = sub.add_parser("score", parents=[common], help="bits per character of a text")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--file")
    text.add_argument("--text")
    p.add_argument("--model", help="default: the active model")
    p.set_defaults(func=score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
