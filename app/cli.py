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
import re
import sys
from dataclasses import MISSING
from pathlib import Path

from app.config import Settings, get_settings
from app.lm.device import DeviceUnavailable, resolve_device
from app.lm.settings import settings_of
from app.lm.store import CorruptCheckpoint, InvalidModelName, StoreError, validate_name
from app.lm.train import TrainingDiverged

log = logging.getLogger("app")

EXIT_STATUS = """exit status: 0 done; 2 the command cannot run as given (an option, a file, a model name,
a device); 1 training diverged or a checkpoint is damaged; 130 interrupted.
On an error, one line on stderr; --debug shows the traceback instead."""


class CliError(Exception):
    """A problem with how the command was called, found before any work: reported as one line."""


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
    from app.main import create_app

    app = create_app(settings)
    host = f"[{args.host}]" if ":" in args.host else args.host
    app.state.public_url = f"http://{host}:{args.port}"
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through the app's handler: one format (JSON with CHARRNN_LOG_JSON)
        access_log=False,  # app.access logs one line per request, with its request id
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    server = uvicorn.Server(config)
    app.state.shutdown = lambda: setattr(server, "should_exit", True)
    server.run()
    # a start that could not produce a model: the process exits non-zero (the reason is logged)
    return 1 if app.state.startup_error else 0


def _store_root(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "model_store", None) or get_settings().model_store)


def _store(args: argparse.Namespace):
    from app.lm.store import ModelStore

    return ModelStore(_store_root(args))


def _device(args: argparse.Namespace):
    spec = args.device or get_settings().device
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and spec in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.device("cuda", int(local_rank))
    return resolve_device(spec)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun


def _init_distributed(device) -> tuple[int, int]:
    """Under torchrun: join the process group (nccl on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    world = _world_size()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _read_text(path: str, flag: str) -> str:
    """A file the user named, as UTF-8; what is wrong with it becomes one line naming the flag."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{flag} {path}: not UTF-8 text (invalid byte at offset {exc.start})") from exc
    except OSError as exc:
        raise CliError(f"{flag} {path}: {exc.strerror or exc}") from exc


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


STOPPED = {
    "budget": "its time budget ran out (--max-seconds)",
    "max_steps": "it reached --max-steps",
    "epochs": "it finished its --epochs",
    "early_stopping": "early stopping: --patience validations without improvement",
}


def _train_summary(s: dict, sentences: bool) -> str:
    lines = [
        f"model       {s['name']} (saved in {s['model_store']})",
        f"steps       {s['steps']} in {_duration(s['seconds'])}"
        + (f" on {s['world_size']} processes" if s["world_size"] > 1 else ""),
        f"stopped     {STOPPED.get(s['stopped'], s['stopped'])}",
    ]
    first, last = s["train_loss_first"], s["train_loss_last"]
    if first is not None and last is not None:
        lines.append(f"train loss  {first:.4f} at the first step, {last:.4f} at the end")
    if s["best_val_loss"] is None:
        lines.append("validation  none held out" + (" (sentences)" if sentences else " (--val-fraction is 0)"))
    else:
        lines.append(f"validation  best {s['best_val_loss']:.4f} nats/char, {s['best_val_bpc']:.4f} bits/char")
    lines.append("active      " + ("yes: complete and score use it without --model" if s["active"] else "no"))
    return "\n".join(lines)


def train(args: argparse.Namespace) -> int:
    import torch.distributed as dist
    from tqdm import tqdm

    from app.lm.data import MIN_CORPUS_CHARS
    from app.service.training import MODEL_FIELDS, TRAIN_FIELDS, TrainSpec, run_training

    _setup_logging(get_settings().log_level)
    device = _device(args)
    store = _store(args)
    if store.exists(args.name) and not args.overwrite and args.resume_from != args.name:
        raise CliError(f"--name: a model named {args.name!r} already exists; pass --overwrite to replace it")
    if args.resume_from is not None and not store.exists(args.resume_from):
        raise CliError(f"--resume-from: no model named {args.resume_from!r} in the model store")
    options = {k: getattr(args, k) for k in (*MODEL_FIELDS, *TRAIN_FIELDS) if getattr(args, k, None) is not None}
    spec = TrainSpec(
        name=args.name,
        corpus=_read_text(args.corpus, "--corpus") if args.corpus else None,
        sentences=args.sentence or None,
        resume_from=args.resume_from,
        options=options,
    )
    spec.train_config()  # a ValueError names the setting; main() turns it into the flag
    needed = MIN_CORPUS_CHARS * _world_size()
    if spec.corpus is not None and len(spec.corpus) < needed:
        raise CliError(
            f"--corpus {args.corpus}: {len(spec.corpus)} characters is too short to train on (at least {needed})"
        )
    rank, world = _init_distributed(device)
    bar = None  # opened at the first report, so an error before training starts is the only line on stderr
    val_bpc = "-"

    def on_progress(p) -> None:
        # the bar is the share of the budget used: steps or seconds, whichever ends the run first
        nonlocal bar, val_bpc
        if bar is None:
            bar = tqdm(
                total=100,
                unit="%",
                ncols=80,
                disable=rank != 0 or args.quiet,
                bar_format="{percentage:3.0f}% |{bar:12}| {desc}",
            )
        used = p.elapsed / (p.elapsed + p.eta) if p.eta is not None and p.elapsed + p.eta > 0 else 0.0
        bar.n = round(100 * min(used, 1.0))
        if p.evaluation is not None and p.evaluation.val_bpc is not None:
            val_bpc = f"{p.evaluation.val_bpc:.3f}"
        eta = f"{max(p.eta, 0.0):.0f}s" if p.eta is not None else "?"
        bar.set_description_str(
            f"step {p.step} loss {p.loss:.3f} val {val_bpc} bpc {p.chars_per_s / 1000:.0f}k ch/s eta {eta}",
            refresh=False,
        )
        bar.refresh()

    try:
        trained, meta = run_training(spec, store, device, on_progress, report_every=10)
    finally:
        if bar is not None:
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
            "train_loss_first": r.first_loss,
            "train_loss_last": r.history[-1].train_loss if r.history else None,
            "world_size": world,
            "active": args.activate,
        }
        print(json.dumps(summary) if args.json else _train_summary(summary, spec.sentences is not None))
    return 0


def _load(args: argparse.Namespace):
    store = _store(args)
    name = args.model or store.active_name()
    if name is None:
        raise CliError("no active model in the model store; pass --model NAME, or train one with --activate")
    if not store.exists(name):
        names = store.names()
        has = f"it has {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else "it is empty"
        raise CliError(f"--model: no model named {name!r} in the model store ({has})")
    return store.load(name, _device(args))


def complete(args: argparse.Namespace) -> int:
    from app.lm.device import decode_dtype
    from app.lm.generate import generate
    from app.lm.sampling import SamplingParams, random_seed

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
    seed = random_seed() if args.seed is None else args.seed
    seqs = generate(checkpoint.model, checkpoint.vocab, args.prefix, params, n=args.n, seed=seed, dtype=dtype)
    if args.json:
        choices = [
            {"index": i, "text": args.prefix + s.text, "completion": s.text, "finish_reason": s.finish_reason}
            for i, s in enumerate(seqs)
        ]
        print(json.dumps({"model": checkpoint.name, "seed": seed, "choices": choices}))
    else:
        for seq in seqs:
            print(args.prefix + seq.text)
    return 0


def score(args: argparse.Namespace) -> int:
    from app.lm.score import score_text

    text = _read_text(args.file, "--file") if args.file else args.text
    checkpoint = _load(args)
    s = score_text(checkpoint.model, checkpoint.vocab, text)
    if args.json:
        print(json.dumps({"model": checkpoint.name, **s.__dict__}))
    else:
        print(
            f"{checkpoint.name}: {s.nats_per_char:.4f} nats/char, {s.bits_per_char:.4f} bits/char, "
            f"perplexity {s.perplexity:.3f}\n{s.chars_scored} characters scored, {s.unknown_chars} unknown to the model"
        )
    return 0


# ---- the parser ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says what the default is
    (options whose default is None or comes from elsewhere spell it out)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, [], argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # a switch
            return f"{text} (default: off)"
        return super()._get_help_string(action)


def _helps(cls) -> dict[str, str]:
    """What each setting of a dataclass does, as declared with it (app/lm/settings.py)."""
    return {setting.name: setting.help for setting in settings_of(cls)}


def _describe(helps: dict[str, str], name: str) -> str:
    return _as_flags(helps.get(name, "")).replace("%", "%%")  # argparse formats help


def _defaults(for_corpus, for_sentences) -> str:
    if for_corpus == for_sentences:
        return f"default: {for_corpus}"
    return f"default: {for_corpus} for a corpus, {for_sentences} for sentences"


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """One option per setting of ModelConfig and TrainConfig, described as declared (app/lm/settings.py),
    with the defaults for a corpus and for sentences from app.lm.default."""
    from app.lm import default
    from app.lm.model import ARCHITECTURE, ModelConfig
    from app.lm.train import TrainConfig

    for cls, corpus, sentences in (
        (ModelConfig, default.CORPUS_MODEL, default.SENTENCE_MODEL),
        (TrainConfig, default.CORPUS_TRAIN.to_json(), default.SENTENCE_TRAIN.to_json()),
    ):
        group = p.add_argument_group(f"{'model' if cls is ModelConfig else 'training'} settings")
        for setting in settings_of(cls):
            if cls is ModelConfig and setting.name not in ARCHITECTURE:
                continue
            fallback = None if setting.default is MISSING else setting.default
            defaults = _defaults(corpus.get(setting.name, fallback), sentences.get(setting.name, fallback))
            group.add_argument(
                "--" + setting.name.replace("_", "-"),
                type=setting.type,
                choices=list(setting.choices) if setting.choices else None,
                help=f"{_as_flags(setting.help).replace('%', '%%')} ({defaults})",
            )


def _model_name(value: str) -> str:
    try:
        return validate_name(value)
    except InvalidModelName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from app.lm.sampling import SamplingParams

    parser = _Parser(prog="charrnn", description=__doc__, epilog=EXIT_STATUS, formatter_class=_HelpFormatter)
    debug_help = "on an error, show the full traceback instead of one line (default: off)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # also accepted after the subcommand; SUPPRESS keeps a subcommand from resetting one given before it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, parents: list) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=parents, help=help, description=help, formatter_class=_HelpFormatter)

    p = command("serve", "run the HTTP service (configured by CHARRNN_* variables)", [debug])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to let requests finish on SIGTERM")
    p.set_defaults(func=serve)

    store_default = Settings.model_fields["model_store"].default
    device_default = Settings.model_fields["device"].default
    common = argparse.ArgumentParser(add_help=False, parents=[debug])
    common.add_argument(
        "--model-store", help=f"directory of checkpoints (default: CHARRNN_MODEL_STORE, else {store_default})"
    )
    common.add_argument(
        "--device", help=f"auto | cpu | cuda | cuda:N | mps (default: CHARRNN_DEVICE, else {device_default})"
    )

    p = command("train", "train a model into the model store", [common])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="a UTF-8 text file to train on (default: none; this or --sentence)")
    source.add_argument(
        "--sentence", action="append", help="a sentence (repeat), padded as in the tutorial (default: none)"
    )
    p.add_argument("--name", required=True, type=_model_name, help="name to save the model as (required)")
    p.add_argument("--resume-from", type=_model_name, help="continue training this stored model (default: none)")
    p.add_argument("--activate", action="store_true", help="make it the active model")
    p.add_argument("--overwrite", action="store_true", help="replace a stored model of the same name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _add_training_options(p)
    p.set_defaults(func=train)

    sampling = SamplingParams()
    notes = _helps(SamplingParams)
    p = command("complete", "complete a prefix with a stored model", [common])
    p.add_argument("prefix", help="the text to continue")
    p.add_argument("--model", type=_model_name, help="a stored model (default: the active model)")
    p.add_argument("--max-new-chars", type=int, default=sampling.max_new_chars, help=_describe(notes, "max_new_chars"))
    p.add_argument("--temperature", type=float, default=sampling.temperature, help=_describe(notes, "temperature"))
    p.add_argument("--top-k", type=int, default=sampling.top_k, help=_describe(notes, "top_k"))
    p.add_argument("--top-p", type=float, default=sampling.top_p, help=_describe(notes, "top_p"))
    p.add_argument("--seed", type=int, help="fixes the output of sampling (default: random; --json reports it)")
    stop_help = f"{_describe(notes, 'stop')}; repeat for more (default: none)"
    p.add_argument("--stop", action="append", default=[], help=stop_help)
    p.add_argument("-n", type=int, default=1, help="how many completions")
    p.add_argument("--json", action="store_true", help="print one JSON object: model, seed and the choices")
    p.set_defaults(func=complete)

    p = command("score", "how well a stored model predicts a text: nats and bits per character", [common])
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--file", help="a UTF-8 text file to score (default: none; this or --text)")
    text.add_argument("--text", help="the text to score (default: none; this or --file)")
    p.add_argument("--model", type=_model_name, help="a stored model (default: the active model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=score)
    return parser


# ---- errors -------------------------------------------------------------------------------------

# what main() reports as one line; anything else is a bug and keeps its traceback
KNOWN_ERRORS = (CliError, StoreError, DeviceUnavailable, TrainingDiverged, OSError, ValueError)


def _as_flag(match: re.Match) -> str:
    return "--" + match[0].replace("_", "-")


def _as_flags(text: str) -> str:
    """Training names its settings as fields (val_fraction); on the command line they are flags."""
    from app.service.training import MODEL_FIELDS, TRAIN_FIELDS

    names = (*MODEL_FIELDS, *TRAIN_FIELDS)
    # any snake_case name is a setting; a one-word one (precision, dropout) only as the subject
    text = re.sub(rf"\b({'|'.join(n for n in names if '_' in n)})\b", _as_flag, text)
    return re.sub(rf"^({'|'.join(names)})\b", _as_flag, text)


def _one_line(exc: BaseException, args: argparse.Namespace) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    if isinstance(exc, ValueError) and not isinstance(exc, StoreError):
        text = _as_flags(text)
    elif isinstance(exc, CorruptCheckpoint):
        text = f"damaged checkpoint: {text}"
    elif isinstance(exc, TrainingDiverged):
        text = f"training diverged: {text}; try a lower --learning-rate"
    # name models, not where the store keeps them
    root = str(_store_root(args))
    text = text.replace(root + os.sep, "")
    text = re.sub(rf" in {re.escape(root)}(?![\w.{re.escape(os.sep)}-])", " in the model store", text)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except KNOWN_ERRORS as exc:
        if args.debug:
            raise
        print(f"charrnn {args.command}: error: {_one_line(exc, args)}", file=sys.stderr)
        return 1 if isinstance(exc, CorruptCheckpoint | TrainingDiverged) else 2


if __name__ == "__main__":
    sys.exit(main())
