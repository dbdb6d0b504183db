"""The charrnn command line: train, complete and score with the service's code and model_store."""

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest

from app import cli
from app.devserver import ROOT
from app.service.training import MODEL_FIELDS, TRAIN_FIELDS

CORPUS = "to be or not to be, that is the question. " * 60
TINY = ["--device", "cpu", "--quiet", "--hidden-size", "16", "--num-layers", "1", "--batch-size", "4",
        "--seq-len", "32", "--eval-interval", "50", "--precision", "fp32"]  # fmt: skip


def charrnn(*args, env=None, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def run(capsys, *args) -> tuple[int, str, str]:
    """The command in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse: --help, usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with one small model, 'hamlet', active; and its training summary."""
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_text(CORPUS)
    store = root / "store"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(
            ["train", "--corpus", str(root / "corpus.txt"), "--name", "hamlet", "--activate", "--json",
             "--model-store", str(store), "--max-steps", "20", *TINY]
        )  # fmt: skip
    assert status == 0
    return store, json.loads(out.getvalue())


def test_train_then_complete_and_score(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    store = str(tmp_path / "store")
    common = ["--model-store", store, "--device", "cpu"]
    out = charrnn(
        "train", "--corpus", str(corpus), "--name", "hamlet", "--activate", "--quiet", "--json", *common,
        "--hidden-size", "32", "--batch-size", "4", "--seq-len", "32", "--epochs", "3", "--precision", "fp32",
    )  # fmt: skip
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["name"] == "hamlet" and summary["steps"] > 0 and summary["best_val_loss"] is not None
    assert (tmp_path / "store" / "hamlet.safetensors").exists()
    completions = charrnn("complete", "to be", "--max-new-chars", "20", "-n", "2", "--temperature", "0.5", *common)
    lines = completions.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("to be") for line in lines)
    score = json.loads(charrnn("score", "--text", "to be or not to be", "--json", *common))
    assert score["model"] == "hamlet" and score["chars_scored"] == 17 and score["bits_per_char"] > 0


def test_train_json_reports_the_first_training_loss_not_the_last(trained):
    _, summary = trained
    assert summary["steps"] == 20 and summary["active"] is True and summary["best_val_loss"] is not None
    # one validation, at the end: the first step's loss (about ln(vocabulary size)) is not the
    # mean since then, which is well below it
    assert summary["train_loss_first"] > summary["train_loss_last"]


def test_train_prints_a_human_summary(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    status, out, err = run(
        capsys, "train", "--corpus", tmp_path / "corpus.txt", "--name", "short", "--max-steps", "5",
        "--model-store", tmp_path / "store", *TINY,
    )  # fmt: skip
    assert status == 0 and err == ""
    assert not out.startswith("{")
    assert re.search(r"model +short\b", out)
    assert re.search(r"steps +5 in \d+\.\d s", out)
    assert re.search(r"validation +best \d+\.\d{4} nats/char, \d+\.\d{4} bits/char", out)
    assert re.search(r"train loss +\d+\.\d{4} at the first step, \d+\.\d{4} at the end", out)
    assert "it reached --max-steps" in out and re.search(r"active +no", out)


def test_score_prints_figures_for_a_person_and_json_on_request(trained, capsys):
    store, _ = trained
    status, out, _ = run(capsys, "score", "--text", "to be or not to be", "--model-store", store, "--device", "cpu")
    assert status == 0
    figures = re.fullmatch(
        r"hamlet: (\d+\.\d+) nats/char, (\d+\.\d+) bits/char, perplexity (\d+\.\d+)\n"
        r"17 characters scored, 0 unknown to the model\n",
        out,
    )
    assert figures, out
    status, out, _ = run(capsys, "score", "--text", "to be or not to be", "--model-store", store, "--json")
    score = json.loads(out)
    assert status == 0 and score["model"] == "hamlet" and score["chars_scored"] == 17
    assert f"{score['bits_per_char']:.4f} bits/char" in figures[0]


def test_complete_json_has_the_model_seed_and_choices(trained, capsys):
    store, _ = trained
    args = ["complete", "to be", "-n", "2", "--max-new-chars", "8", "--temperature", "0.8", "--model-store", store]
    status, out, _ = run(capsys, *args, "--json", "--seed", "7")
    reply = json.loads(out)
    assert status == 0 and reply["model"] == "hamlet" and reply["seed"] == 7
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    for choice in reply["choices"]:
        assert choice["text"] == "to be" + choice["completion"] and len(choice["completion"]) == 8
        assert choice["finish_reason"] == "length"
    _, text, _ = run(capsys, *args, "--seed", "7")
    assert text.splitlines() == [c["text"] for c in reply["choices"]]  # the same completions, as plain text
    _, out, _ = run(capsys, *args, "--json")
    assert isinstance(json.loads(out)["seed"], int)  # a drawn seed is reported


ERRORS = {  # id: (arguments, exit status, what the line must say)
    "unknown model": (["complete", "x", "--model", "nosuch"], 2, "no model named 'nosuch'"),
    "missing corpus": (["train", "--corpus", "{tmp}/missing.txt", "--name", "a"], 2, "--corpus"),
    "short corpus": (["train", "--corpus", "{tmp}/short.txt", "--name", "a"], 2, "too short to train on (at least 3)"),
    "existing name": (["train", "--corpus", "{tmp}/corpus.txt", "--name", "hamlet"], 2, "--overwrite"),
    "not UTF-8 corpus": (["train", "--corpus", "{tmp}/latin1.txt", "--name", "a"], 2, "not UTF-8"),
    "corpus is a folder": (["train", "--corpus", "{tmp}", "--name", "a"], 2, "--corpus"),
    "missing score file": (["score", "--file", "{tmp}/missing.txt"], 2, "--file"),
    "not UTF-8 score file": (["score", "--file", "{tmp}/latin1.txt"], 2, "--file"),
    "absent device": (["complete", "x", "--device", "cuda:99"], 2, "cuda:99"),
    "bad setting": (["train", "--corpus", "{tmp}/corpus.txt", "--name", "a", "--lr-schedule", "x"], 2, "--lr-schedule"),
    "damaged checkpoint": (["complete", "x", "--model", "bad", "--model-store", "{tmp}/store"], 1, "bad.json"),
    "no active model": (["score", "--text", "ab", "--model-store", "{tmp}/empty"], 2, "--model"),
    "no text to score": (["score"], 2, "--file --text"),
    "invalid model name": (["complete", "x", "--model", "a/b"], 2, "invalid model name"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_an_error_is_one_line_naming_flags_not_fields_nor_the_store(case, trained, tmp_path, capsys):
    store, _ = trained
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "short.txt").write_text("to")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "bad.json").write_text("{}")
    args, expected_status, says = ERRORS[case]
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model-store" not in args:
        args += ["--model-store", str(store)]
    status, out, err = run(capsys, *args)
    assert status == expected_status and out == ""
    assert err.count("\n") == 1 and err.startswith(f"charrnn {args[0]}: error: "), err
    assert says in err and "Traceback" not in err
    assert str(store) not in err and str(tmp_path / "store") not in err
    assert not [name for name in (*MODEL_FIELDS, *TRAIN_FIELDS) if "_" in name and name in err]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_lets_the_exception_through(where, trained, capsys):
    store, _ = trained
    args = ["complete", "x", "--device", "cuda:99", "--model-store", str(store)]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    with pytest.raises(cli.DeviceUnavailable):
        cli.main(args)


def test_the_installed_command_prints_one_line_or_with_debug_the_traceback(tmp_path):
    args = [sys.executable, "-m", "app", "score", "--text", "ab", "--model", "nosuch", "--model-store", str(tmp_path)]
    plain = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr == "charrnn score: error: --model: no model named 'nosuch' in the model store (it is empty)\n"
    debug = subprocess.run([*args, "--debug"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "score", interrupted)
    try:
        result = run(capsys, "score", "--text", "ab")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main()")
    assert result == (130, "", "interrupted\n")


@pytest.mark.parametrize("command", ["serve", "train", "complete", "score"])
def test_help_gives_every_option_a_default(command, capsys):
    status, out, _ = run(capsys, command, "--help")
    assert status == 0
    entries, section = [], None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            section = line
        elif section != "positional arguments:" and line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    flags = {e.split()[0].rstrip(",") for e in entries}
    parser = cli.build_parser()._subparsers._group_actions[0].choices[command]
    assert flags == {a.option_strings[0] for a in parser._actions if a.option_strings}
    for entry in entries:
        if not entry.startswith("  -h, --help"):
            assert "(default: " in entry or "(required)" in entry, entry
    if command == "train":
        epochs = next(e for e in entries if e.startswith("  --epochs"))
        assert "passes over the data" in epochs and "for a corpus" in epochs and "for sentences" in epochs
        for name in (*MODEL_FIELDS, *TRAIN_FIELDS):  # each setting says what it does, not only its default
            entry = next(e for e in entries if e.startswith(f"  --{name.replace('_', '-')} "))
            assert not re.match(r" +--\S+ \S+ +\(default", entry), entry


@pytest.mark.server
def test_distributed_training_with_torchrun_on_two_cpu_processes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 2)
    store = tmp_path / "store"
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "app", "train", "--corpus", str(corpus), "--name", "ddp", "--quiet", "--json",
            "--model-store", str(store), "--device", "cpu",
            "--hidden-size", "32", "--batch-size", "4", "--seq-len", "32", "--epochs", "4",
            "--eval-interval", "5", "--precision", "fp32",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports
    summary = summaries[0]
    assert summary["world_size"] == 2
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert sorted(p.name for p in store.iterdir()) == ["ddp.json", "ddp.optim.safetensors", "ddp.safetensors"]


def test_the_progress_bar_runs_to_the_real_stopping_point_within_80_columns(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = ["train", "--corpus", tmp_path / "corpus.txt", "--name", "bar", "--model-store", tmp_path / "store"]
    status, out, err = run(capsys, *args, "--max-seconds", "2", "--epochs", "100000", "--hidden-size", "16")
    assert status == 0 and "its time budget ran out (--max-seconds)" in out
    frames = [f.strip() for f in err.replace("\r", "\n").splitlines() if "%" in f]
    assert frames and all(len(f) <= 80 for f in frames)
    assert frames[-1].startswith("100%")  # the time budget, not the 100,000 epochs, sets the bar's end
    assert any(re.search(r"val \d\.\d{3} bpc", f) for f in frames)  # validation bits/char as it appears
