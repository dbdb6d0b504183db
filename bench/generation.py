"""Tutorial sampler (baseline) vs the service's decoder, on the same weights; prints one JSON object.

`--device cuda` runs every figure on the GPU (the tutorial's sampler there too, as the tutorial
does where CUDA is present; the service over HTTP with CHARRNN_DEVICE=cuda): the "compiled" path
is then a step replayed as a CUDA graph (app/lm/cuda_graphs.py), the reference torch's step
kernel by kernel, and the bound the step's products alone, replayed as one graph (or eagerly,
whichever is faster). The CPU's compiled-code figures (products inside a call, the cost outside
them) are CPU-only and left out there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from app.devserver import Server
from app.lm import cuda_graphs, default, fastpath, fastpath_large
from app.lm.constraint import compile_regex
from app.lm.device import resolve_device
from app.lm.generate import generate
from app.lm.model import CharRNN, ModelConfig
from app.lm.sampling import SamplingParams
from app.lm.store import ModelStore
from app.lm.train import build_model, train_on_text
from app.lm.vocab import Vocab

ROOT = Path(__file__).resolve().parent.parent
ANY_TEXT = "[\\s\\S]+"  # the regex of step_costs' all_t0.8: every character allowed, never an END


def tutorial_sample(model: CharRNN, vocab: Vocab, out_len: int, start: str) -> str:
    """BASELINE: the tutorial's predict()/sample(), faithfully: every new character re-runs the
    whole text so far (one-hot encoded with NumPy where the model takes one-hot input) from a
    zero hidden state, with autograd on as in the tutorial, and takes the argmax of the last output."""
    model.eval()
    dict_size = model.config.vocab_size
    chars = list(start)
    for _ in range(out_len - len(chars)):
        ids = np.array([vocab.encode("".join(chars))])
        if model.config.encoding == "one_hot":
            features = np.zeros((1, ids.shape[1], dict_size), dtype=np.float32)
            for u in range(ids.shape[1]):
                features[0, u, ids[0, u]] = 1
            x = torch.from_numpy(features).to(model.fc.weight.device)
        else:
            x = model.embed(torch.from_numpy(ids).to(model.fc.weight.device))
        hidden = model.init_state(1)
        if model.config.cell == "lstm":
            h, c = hidden.chunk(2)
            out, _ = model.rnn(x, (h, c))
        else:
            out, _ = model.rnn(x, hidden)
        out = model.fc(out.contiguous().view(-1, model.config.hidden_size))
        prob = nn.functional.softmax(out[-1], dim=0).data
        prob[vocab.unk_index] = 0  # the tutorial had no UNK; never emit it here either
        char_ind = torch.max(prob, dim=0)[1].item()
        chars.append(vocab.id_to_char(char_ind))
    return "".join(chars)


def gpu_model(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def cpu_model() -> str:
    """The CPU's model name (lscpu's), to print beside every figure."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def chars_per_s(fn, new_chars: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return new_chars / statistics.median(times)


def compare(model: CharRNN, vocab: Vocab, prefix: str, lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in lengths:
        base_out = tutorial_sample(model, vocab, len(prefix) + n, prefix)
        ours_out = prefix + generate(model, vocab, prefix, SamplingParams(max_new_chars=n))[0].text
        base = chars_per_s(
            lambda n=n: tutorial_sample(model, vocab, len(prefix) + n, prefix), n, 1 if n > 500 else repeats
        )
        ours = chars_per_s(lambda n=n: generate(model, vocab, prefix, SamplingParams(max_new_chars=n)), n, repeats)
        rows.append(
            {
                "new_chars": n,
                "baseline_tutorial_chars_per_s": round(base, 1),
                "service_decoder_chars_per_s": round(ours, 1),
                "ratio": round(ours / base, 1),
                "same_text": base_out == ours_out,
            }
        )
    return rows


def step_costs(
    model: CharRNN, vocab: Vocab, prefix: str, pattern: str, new_chars: int, repeats: int, dtype: torch.dtype
) -> dict:
    """Microseconds per generated character with each sampler option beside plain greedy decoding,
    on one stream (the same steps, so the difference is the option's own per-step cost), and what
    each costs outside the step's matrix products (each repeat's step less the products timed alone
    on the compiled path just before it: marginal_seconds).
    A character's cost is the slope between requests of new_chars and twice that (marginal_seconds),
    a request's fixed cost reported beside it. On the CPU every option is sampled in compiled code
    (fastpath.Extras); on a GPU, a regex, log-probabilities and penalties take the one-step path."""
    automaton = compile_regex(pattern, vocab)
    # sampled (all_t0.8), a row at a full match of `pattern` ends at the first character outside it,
    # which untrained weights draw within a few steps: there, a regex that every text matches
    anything = compile_regex(ANY_TEXT, vocab)
    cases = {
        "greedy": (SamplingParams(max_new_chars=new_chars), None),
        "t0.8_topk40": (SamplingParams(max_new_chars=new_chars, temperature=0.8, top_k=40), None),
        "t0.8_topp0.9": (SamplingParams(max_new_chars=new_chars, temperature=0.8, top_p=0.9), None),
        "stop_strings": (SamplingParams(max_new_chars=new_chars, stop=("\u2603\u2603", "~~~", "@@")), None),
        "logprobs5": (SamplingParams(max_new_chars=new_chars, logprobs=5), None),
        "regex": (SamplingParams(max_new_chars=new_chars), automaton),
        "penalties": (
            SamplingParams(
                max_new_chars=new_chars, repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.1
            ),
            None,
        ),
        "all_t0.8": (
            SamplingParams(
                max_new_chars=new_chars,
                temperature=0.8,
                top_k=40,
                min_p=0.02,
                repetition_penalty=1.1,
                presence_penalty=0.2,
                logit_bias=((1, -1.0),),
                logprobs=5,
            ),
            anything,
        ),
    }
    out: dict = {"pattern": pattern, "all_t0.8_pattern": ANY_TEXT, "new_chars": new_chars}
    fixed, outside = {}, {}
    products_alone = products_timer(model, dtype) if fastpath.supports(model, dtype) else None
    for name, (params, constraint) in cases.items():

        def run(n: int, params=params, constraint=constraint) -> int:
            p = dataclasses.replace(params, max_new_chars=n)
            [seq] = generate(model, vocab, prefix, p, seed=1, constraint=constraint, dtype=dtype)
            return seq.steps

        per_step, fixed[name], _, outside[name] = marginal_seconds(run, new_chars, repeats, products_alone)
        out[name + "_us_per_char"] = round(per_step * 1e6, 2)
    plain = out["greedy_us_per_char"]
    out["decode_dtype"] = str(dtype).removeprefix("torch.")
    per_char = {k.removesuffix("_us_per_char"): v for k, v in out.items() if k.endswith("_us_per_char")}
    out["extra_us_over_greedy"] = {k: round(v - plain, 2) for k, v in per_char.items()}
    if products_alone is not None:  # the CPU's compiled path: its products can be timed alone
        out["matrix_products_us_per_step"] = round(products_seconds(products_alone, repeats) * 1e6, 2)
        out["outside_products_us_per_char"] = {k: round(v * 1e6, 2) for k, v in outside.items()}
    out["per_request_ms"] = {k: round(v * 1e3, 2) for k, v in fixed.items()}
    return out


def marginal_seconds(run, n: int, repeats: int, products=None) -> tuple[float, float, float, float | None]:
    """The cost of one more character: run(k) generates k characters (returns the steps it took);
    timed at n and 2n characters, the slope between them, what a request costs besides its steps
    (the intercept: the stream's set-up, its first call of cold code), and the seconds of a request
    of n. Medians of `repeats`. Where the longer request ended before n more steps, or took no longer
    (noise, at tiny n), that repeat's figure is its average step.

    With `products` (seconds of a step's matrix products alone, timed when called), also the cost
    of a step outside its products: each repeat's slope less the products timed just before it,
    the median of those differences. Paired so, the few microseconds outside the products are not
    lost in the machine's drift between two figures of ~100 us taken at different times. An
    uncounted request follows the products' timing, so that the timed ones start as warm as a
    server's next request does (after 50 ms of other work, the default model's 1.3 ms request
    took 3-4 ms)."""
    run(n)  # uncounted: the first request of a model and dtype builds its weights and loads code
    slopes, fixed, requests, products_s, outside = [], [], [], 0.0, []
    for _ in range(repeats):
        if products is not None:
            products_s = products()
            run(n)
        t = time.perf_counter()
        short = run(n)
        t_short = time.perf_counter() - t
        requests.append(t_short)
        t = time.perf_counter()
        long = run(2 * n)
        t_long = time.perf_counter() - t
        slope = (t_long - t_short) / (long - short) if long - short >= n // 2 else 0.0
        if slope > 0:
            fixed.append(t_short - short * slope)
        else:  # the longer request ended early (a regex's END), or noise outweighed n steps: its average step
            slope = t_long / max(long, 1)
        slopes.append(slope)
        if products is not None:
            outside.append(slope - products_s)
    return (
        statistics.median(slopes),
        statistics.median(fixed) if fixed else 0.0,
        statistics.median(requests),
        statistics.median(outside) if outside else None,
    )


def products_timer(model: CharRNN, dtype: torch.dtype):
    """A function timing the compiled path's matrix products of a one-row step, alone (about 50 ms of them)."""
    n = max(50, int(0.05 / max(fastpath.time_steps(model, dtype, 1, 20, True), 1e-7)))
    return lambda: fastpath.time_steps(model, dtype, 1, n, True)


def products_seconds(timed, repeats: int) -> float:
    """The compiled path's matrix products of one one-row step, alone (median of `repeats` of a products_timer)."""
    return statistics.median(timed() for _ in range(repeats))


def one_row_bound(model: CharRNN, dtype: torch.dtype, repeats: int) -> dict:
    """The weight-reading bound of one step: the model's decode matrices (same shapes, same bytes,
    `dtype`; the output layer in float32), each multiplied by one row in turn, by torch and by NumPy
    (float32 only: NumPy has no bfloat16); the faster of the two, median of `repeats`. On a GPU,
    torch's products launched one by one and replayed as one CUDA graph (there a step's few MB
    are read in well under a microsecond: launching the products is the bound)."""
    device = model.fc.weight.device
    on_cpu = model if device.type == "cpu" else copy.deepcopy(model).cpu()
    shapes = fastpath.fast_weights(on_cpu, dtype).matrix_shapes
    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(k, n, generator=gen) for k, n in shapes]
    mats = [(m.to(dtype) if i < len(mats) - 1 else m).to(device) for i, m in enumerate(mats)]
    rows = [torch.randn(1, m.shape[0], generator=gen).to(m.dtype).to(device) for m in mats]

    def timed(fn) -> float:
        fn()
        n = max(20, int(0.05 / max(_once(fn, device), 1e-7)))
        return statistics.median(_once(fn, device, n) for _ in range(repeats))

    def products() -> list[torch.Tensor]:
        return [torch.mm(x, m) for x, m in zip(rows, mats, strict=True)]

    out = {"torch_s": timed(products)}
    if device.type == "cuda":
        graph, _ = cuda_graphs.record(device, products)
        out["cuda_graph_s"] = timed(graph.replay)
    elif dtype == torch.float32:
        np_mats, np_rows = [m.numpy() for m in mats], [x.numpy() for x in rows]
        out["numpy_s"] = timed(lambda: [x @ m for x, m in zip(np_rows, np_mats, strict=True)])
    out["bound_s"] = min(out.values())
    out["weight_bytes"] = sum(m.numel() * m.element_size() for m in mats)
    return out


def _once(fn, device: torch.device, n: int = 1) -> float:
    """Seconds per call of fn over n calls (on a GPU, until its work is done)."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / n


def at_the_limit(model: CharRNN, vocab: Vocab, prefix: str, dtypes, new_chars: int, repeats: int) -> list[dict]:
    """One stream, in-process: chars/s of the compiled path (greedy and T=0.8) beside torch's
    one-step reference path (whole requests of new_chars), the time of a step (marginal_seconds)
    split into matrix products and everything else, and the fraction of the weight-reading bound
    reached (bound time / step time). On a GPU the compiled path is the step replayed as a CUDA
    graph, the reference torch's kernels launched one by one; the products are not timed apart."""
    rows = []
    for dtype in dtypes:
        bound = one_row_bound(model, dtype, repeats)
        products_alone = products_timer(model, dtype) if fastpath.supports(model, dtype) else None
        row: dict = {
            "decode_dtype": str(dtype).removeprefix("torch."),
            "bound_us_per_step": round(bound["bound_s"] * 1e6, 2),
            "bound_torch_us": round(bound["torch_s"] * 1e6, 2),
            "bound_numpy_us": round(bound["numpy_s"] * 1e6, 2) if "numpy_s" in bound else None,
            "bound_cuda_graph_us": round(bound["cuda_graph_s"] * 1e6, 2) if "cuda_graph_s" in bound else None,
            "weight_bytes_per_step": bound["weight_bytes"],
            "matrix_products_us_per_step": (
                round(products_seconds(products_alone, repeats) * 1e6, 2) if products_alone is not None else None
            ),
        }
        for label, temperature in (("greedy", 0.0), ("t0.8", 0.8)):

            def run(n: int, compiled: bool = True, t: float = temperature, d: torch.dtype = dtype) -> int:
                params = SamplingParams(max_new_chars=n, temperature=t)
                return generate(model, vocab, prefix, params, seed=1, dtype=d, compiled=compiled)[0].steps

            # the compiled path's whole requests of new_chars are the short half of marginal_seconds
            step, fixed, request, outside = marginal_seconds(run, new_chars, repeats, products_alone)
            row[f"{label}_compiled_chars_per_s"] = round(new_chars / request, 1)
            reference = chars_per_s(lambda: run(new_chars, compiled=False), new_chars, repeats)
            row[f"{label}_reference_chars_per_s"] = round(reference, 1)
            row[f"{label}_us_per_step"] = round(step * 1e6, 2)
            row[f"{label}_per_request_ms"] = round(fixed * 1e3, 2)
            row[f"{label}_outside_products_us_per_step"] = round(outside * 1e6, 2) if outside is not None else None
            row[f"{label}_fraction_of_bound"] = round(bound["bound_s"] / step, 3)
            row[f"{label}_speedup_vs_reference"] = round(
                row[f"{label}_compiled_chars_per_s"] / row[f"{label}_reference_chars_per_s"], 1
            )
        rows.append(row)
    return rows


def large_batch(model: CharRNN, rows: int, steps: int, repeats: int, busy: float) -> list[dict]:
    """chars/s of the CPU's large batch path in-process (rows at T=0.8, calls of `steps` steps):
    every step in one compiled call (MKL's products called from it: no GIL, where torch has MKL)
    and a step at a time from Python (torch's calls for the products, compiled calls between
    them: the path where torch has no MKL, and this path before), each alone and beside a Python
    thread that holds the GIL `busy` of the time (as the HTTP event loop does under 64 clients:
    about a fifth); torch at one thread, as the service decodes. Medians of `repeats` calls,
    alternated."""

    vocab = model.config.vocab_size
    cfg = model.config
    dtypes = [torch.float32, torch.bfloat16]

    def call(dtype: torch.dtype, mkl: bool) -> float:
        gen = np.random.default_rng(0)
        chunk = fastpath.Chunk(
            np.zeros((rows, 1), np.int64), np.zeros(rows, np.int64), np.full(rows, 0.8), np.zeros(rows, np.int64),
            np.ones(rows), np.zeros(rows), gen.random((rows, steps)), np.full(rows, steps, np.int64),
            np.zeros((rows, steps), np.int64), 0,
        )  # fmt: skip
        state, logits = torch.zeros(cfg.state_rows, rows, cfg.hidden_size), torch.zeros(rows, vocab)
        t = time.perf_counter()
        done = fastpath_large.decode_chunk(model, dtype, state, logits, chunk, mkl=mkl)
        return rows * done / (time.perf_counter() - t)

    stop = threading.Event()

    def python_busy() -> None:  # holds the GIL `busy` of each millisecond, sleeps the rest
        while not stop.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < busy * 1e-3:
                pass
            time.sleep((1 - busy) * 1e-3)

    paths = [True, False] if fastpath_large.blas.available() else [False]  # (MKL's bf16 on any CPU here)
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for dtype in dtypes:
                for mkl in paths:
                    call(dtype, mkl)  # compiles or loads this path's code
                for load in ("alone", "beside_busy_python"):
                    noise = threading.Thread(target=python_busy, daemon=True) if load != "alone" else None
                    if noise is not None:
                        stop.clear()
                        noise.start()
                    rates: dict[bool, list[float]] = {mkl: [] for mkl in paths}
                    for _ in range(repeats):
                        for mkl in paths:
                            rates[mkl].append(call(dtype, mkl))
                    if noise is not None:
                        stop.set()
                        noise.join()
                    for mkl in paths:
                        out.append({
                            "decode_dtype": str(dtype).removeprefix("torch."), "rows": rows, "steps_per_call": steps,
                            "steps": "one_compiled_call" if mkl else "python_per_step", "load": load,
                            "chars_per_s": round(statistics.median(rates[mkl]), 1),
                        })  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out


def http_default_model(store: str, new_chars: int, repeats: int, device: str) -> float:
    """Greedy chars/s of one request over HTTP on the default model (trained by the first server
    on `store`, loaded by the next)."""
    with Server(store, env={"CHARRNN_DEVICE": device}) as server, httpx.Client(timeout=120) as client:
        body = {"prefix": "good", "max_new_chars": new_chars}
        return new_chars / completion_seconds(client, server.url, body, repeats)


def completion_seconds(client: httpx.Client, url: str, body: dict, repeats: int) -> float:
    """Median seconds of a POST /complete (after one uncounted warm-up); each must give every character."""
    client.post(url + "/complete", json=body)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = client.post(url + "/complete", json=body)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200 and r.json()["usage"]["completion_chars"] == body["max_new_chars"]
    return statistics.median(times)


def http_lstm(model: CharRNN, vocab: Vocab, prefix: str, new_chars: int, repeats: int) -> dict:
    """One 1000-character request over HTTP on the 2x256 LSTM (decode precision auto), beside the
    same completion in-process on the same precision (the server on the model's device)."""
    device = model.fc.weight.device
    with tempfile.TemporaryDirectory() as store, httpx.Client(timeout=300) as client:
        models = ModelStore(store)
        models.save("lstm", copy.deepcopy(model).cpu(), vocab)
        models.set_active("lstm")
        with Server(store, env={"CHARRNN_DEVICE": str(device)}) as server:
            dtype = client.get(server.url + "/health").json()["decode_dtype"]
            body = {"prefix": prefix, "max_new_chars": new_chars, "temperature": 0.8, "seed": 1}
            seconds = completion_seconds(client, server.url, body, repeats)
    params = SamplingParams(max_new_chars=new_chars, temperature=0.8)
    torch_dtype = getattr(torch, dtype)
    local = chars_per_s(lambda: generate(model, vocab, prefix, params, seed=1, dtype=torch_dtype), new_chars, repeats)
    http = new_chars / seconds
    return {
        "new_chars": new_chars,
        "decode_dtype": dtype,
        "http_chars_per_s": round(http, 1),
        "in_process_chars_per_s": round(local, 1),
        "http_vs_in_process": round(http / local, 3),
    }


def first_event_seconds(client: httpx.Client, url: str, body: dict) -> float:
    """Seconds from sending a streamed completion to its first event with text. The stream is
    read to its end, as a client does before it sends its next request (one that hung up at the
    first character would leave the server a cancellation and itself a new connection to open)."""
    t = time.perf_counter()
    first = None
    with client.stream("POST", url + "/complete", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if first is None and line.startswith("data:") and '"text": "' in line and '"text": ""' not in line:
                first = time.perf_counter() - t
    if first is None:
        raise RuntimeError("no text arrived")
    return first


def http_prefix_cache(store: str, prefix_chars: int, repeats: int, device: str) -> dict:
    """Time to the first streamed character for a long prefix: sent once (read whole), then again
    (resumed from the prefix cache), with the cache on and off, on the default model over HTTP."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("hey how are you good i am fine have a nice day "))
    out: dict = {"prefix_chars": prefix_chars}
    for setting, label in (("64000000", "cache_on"), ("0", "cache_off")):
        firsts, seconds = [], []
        with (
            Server(store, env={"CHARRNN_PREFIX_CACHE_BYTES": setting, "CHARRNN_DEVICE": device}) as server,
            httpx.Client(timeout=300) as client,
        ):
            for _k in range(repeats):
                prefix = "".join(rng.choice(alphabet, prefix_chars))  # a new document each round
                body = {"prefix": prefix, "max_new_chars": 5}
                firsts.append(first_event_seconds(client, server.url, body))
                seconds.append(first_event_seconds(client, server.url, body))
        first, second = statistics.median(firsts), statistics.median(seconds)
        out[label] = {
            "first_request_s": round(first, 4),
            "same_prefix_again_s": round(second, 4),
            "speedup": round(first / second, 1),
        }
    return out


PARTS = ("tutorial", "limit", "costs", "http", "batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="200,2000")
    parser.add_argument("--repeats", type=int, default=5, help="every figure is the median of this many runs")
    parser.add_argument("--prefix-chars", type=int, default=50_000, help="long prefix for the prefix-cache figure")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where every figure runs")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "shakespeare_train.txt")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if not only <= set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(only - set(PARTS)))}")
    lengths = [int(x) for x in args.lengths.split(",")]
    device = resolve_device(args.device)

    trained = train_on_text(sentences=default.SENTENCES, config=default.TRAIN_CONFIG, **default.MODEL_KWARGS)
    tiny, tiny_vocab = trained.model.to(device), trained.vocab
    vocab = Vocab.from_text(args.corpus.read_text())
    lstm_cfg = ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    lstm = build_model(lstm_cfg, seed=0).eval().to(device)

    results: dict = {}
    http_len = max(lengths)
    if "tutorial" in only:
        results["default_model"] = compare(tiny, tiny_vocab, "good", lengths, args.repeats)
        results["lstm_2x256_embedding"] = compare(lstm, vocab, "ROMEO:\n", lengths, args.repeats)
    if "limit" in only:
        results["one_stream_at_the_limit"] = {
            "default_model": at_the_limit(tiny, tiny_vocab, "good", [torch.float32], http_len, args.repeats),
            "lstm_2x256_embedding": at_the_limit(
                lstm, vocab, "ROMEO:\n", [torch.float32, torch.bfloat16], http_len, args.repeats
            ),
        }
    if "costs" in only:
        lstm_pattern = "([A-Za-z]+[ ,.;:!?'\n-]*)+"
        results["sampler_step_costs"] = {
            "default_model": step_costs(tiny, tiny_vocab, "good", "[a-z ]+", http_len, args.repeats, torch.float32),
            "lstm_2x256_embedding_fp32": step_costs(
                lstm, vocab, "ROMEO:\n", lstm_pattern, http_len, args.repeats, torch.float32
            ),
            "lstm_2x256_embedding_bf16": step_costs(
                lstm, vocab, "ROMEO:\n", lstm_pattern, http_len, args.repeats, torch.bfloat16
            ),
        }
    if "batch" in only and device.type == "cpu":
        results["lstm_2x256_large_batch_in_process"] = {
            "python_busy_fraction": 0.2,
            "runs": large_batch(lstm, 64, 200, args.repeats, 0.2),
        }
    if "http" in only:
        results["lstm_2x256_http_one_request"] = http_lstm(lstm, vocab, "ROMEO:\n", 1000, args.repeats)
        with tempfile.TemporaryDirectory() as store:  # the default model's, trained once
            http = http_default_model(store, http_len, args.repeats, str(device))
            results["prefix_cache_time_to_first_char"] = http_prefix_cache(
                store, args.prefix_chars, args.repeats, str(device)
            )
        results["default_model_http"] = {"new_chars": http_len, "http_chars_per_s": round(http, 1)}
        if "default_model" in results:  # the tutorial's figure from the same run
            tutorial = next(r for r in results["default_model"] if r["new_chars"] == http_len)
            results["default_model_http"]["tutorial_chars_per_s"] = tutorial["baseline_tutorial_chars_per_s"]
            results["default_model_http"]["ratio_vs_tutorial"] = round(
                http / tutorial["baseline_tutorial_chars_per_s"], 1
            )
    print(
        json.dumps(
            {
                "bench": "generation",
                "cpu": cpu_model(),
                "device": str(device),
                "gpu": gpu_model(device),
                "settings": {
                    "greedy": True,
                    "repeats_median_of": args.repeats,
                    "torch_threads": torch.get_num_threads(),
                    "baseline": "tutorial sample(): whole text re-run per character (O(n^2)), on the device",
                    "compiled_path": "CUDA graph per step" if device.type == "cuda" else "numba (app/lm/fastpath.py)",
                    "lstm": lstm_cfg.to_json() | {"weights": "untrained, seed 0 (speed only)"},
                    "parts": sorted(only),
                },
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
