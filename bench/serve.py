"""Serving throughput and latency over HTTP, batching on vs off, against a matmul roofline; prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

from app.devserver import Server
from app.lm.device import resolve_device
from app.lm.model import ModelConfig
from app.lm.store import ModelStore
from app.lm.train import build_model
from app.lm.vocab import Vocab

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("bench.serve")

MODEL_NAME = "lstm2x256"
PREFIX = "ROMEO:\n"
MAX_NEW_CHARS = 200
TEMPERATURE = 0.8
SINGLE_CHARS = 1000
SINGLE_TARGET_CHARS_PER_S = 5000
SERVER_ENV = {"CHARRNN_LOG_LEVEL": "warning", "CHARRNN_MAX_QUEUED_REQUESTS": "1024"}
# the mixed load: client k adds MIXED_OPTIONS[k % 4] to its requests (the web page asks for
# log-probabilities; a regex, here of exactly MAX_NEW_CHARS characters so that every request has
# the same length, and penalties are what a writer steers with)
MIXED_OPTIONS = [
    {},
    {"logprobs": 5},
    {"regex": "[A-Za-z ,.;:!?'\\n-]{200}"},
    {"repetition_penalty": 1.1, "presence_penalty": 0.2},
]
TIMEOUT = httpx.Timeout(120.0)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def build_store(store: Path, corpus: Path) -> ModelConfig:
    """Saves an untrained (seed 0) 2x256 embedding LSTM over the corpus's characters and activates it."""
    vocab = Vocab.from_text(corpus.read_text(encoding="utf-8"))
    cfg = ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    model_store = ModelStore(store)
    model_store.save(MODEL_NAME, build_model(cfg, seed=0).eval(), vocab)
    model_store.set_active(MODEL_NAME)
    return cfg


def matmul_flops_per_s(
    size: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """Median rate of size x size @ size x size in `dtype`, with torch's default threads (on a GPU,
    each product waited for)."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * size**3 / statistics.median(times)


# ---- concurrent load ----------------------------------------------------------------------------


@dataclass
class Load:
    window_start: float
    window_end: float
    seeds: itertools.count
    latencies: list[float] = field(default_factory=list)
    chars: int = 0
    errors: int = 0
    first_error: str | None = None

    def error(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message


async def client_loop(client: httpx.AsyncClient, url: str, load: Load, delay: float, options: dict) -> None:
    """After `delay`, posts completions (with `options` added) back to back until the window
    closes; counts those that end inside it."""
    await asyncio.sleep(delay)
    while time.monotonic() < load.window_end:
        body = {
            "prefix": PREFIX, "max_new_chars": MAX_NEW_CHARS, "temperature": TEMPERATURE, "seed": next(load.seeds),
            **options,
        }  # fmt: skip
        start = time.monotonic()
        try:
            r = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            load.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.05)
            continue
        end = time.monotonic()
        if r.status_code != 200:
            load.error(f"HTTP {r.status_code}: {r.text[:200]}")
            await asyncio.sleep(0.05)
            continue
        if load.window_start <= end <= load.window_end:
            load.latencies.append(end - start)
            load.chars += r.json()["usage"]["completion_chars"]


async def client_group(url: str, first: int, count: int, total: int, window: tuple, warmup: float, mixed: bool) -> Load:
    """Clients first..first+count-1 of `total`, in this process; starts staggered over half the
    warm-up. `mixed`: client k adds MIXED_OPTIONS[k % 4] to its requests."""
    load = Load(window[0], window[1], itertools.count(1_000_000 * (first + 1)))
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as client:
        await asyncio.gather(
            *(
                client_loop(
                    client, url + "/complete", load, (first + i) * warmup / 2 / total,
                    MIXED_OPTIONS[(first + i) % len(MIXED_OPTIONS)] if mixed else {},
                )
                for i in range(count)
            )
        )  # fmt: skip
    return load


def client_process(url: str, first: int, count: int, total: int, window: tuple, warmup: float, mixed: bool) -> Load:
    return asyncio.run(client_group(url, first, count, total, window, warmup, mixed))


def run_load(url: str, clients: int, seconds: float, warmup: float, procs: int, mixed: bool = False) -> Load:
    """`clients` loops for warmup + seconds, spread over `procs` client processes so that the load
    generator's own Python does not cap the rate; in-flight requests at the end finish uncounted.

    Clients start staggered over the first half of the warm-up, so equal-length requests do not all end
    together in bursts that would make the count depend on where the window edges fall.
    """
    procs = max(1, min(procs, clients))
    now = time.monotonic()  # system-wide clock: comparable across the client processes
    window = (now + warmup, now + warmup + seconds)
    shares = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    firsts = [sum(shares[:k]) for k in range(procs)]
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [
            pool.submit(client_process, url, first, count, clients, window, warmup, mixed)
            for first, count in zip(firsts, shares, strict=True)
        ]
        parts = [f.result() for f in futures]
    total = Load(window[0], window[1], itertools.count())
    for part in parts:
        total.latencies += part.latencies
        total.chars += part.chars
        total.errors += part.errors
        total.first_error = total.first_error or part.first_error
    return total


def load_row(batching: bool, clients: int, load: Load, seconds: float, roofline: float) -> dict:
    rate = load.chars / seconds
    return {
        "batching": batching,
        "clients": clients,
        "requests": len(load.latencies),
        "errors": load.errors,
        "first_error": load.first_error,
        "aggregate_chars_per_s": round(rate, 1),
        "latency_p50_ms": ms(percentile(load.latencies, 50)),
        "latency_p99_ms": ms(percentile(load.latencies, 99)),
        "roofline_fraction": round(rate / roofline, 4),
    }


# ---- sequential probes --------------------------------------------------------------------------


def first_text_event(client: httpx.Client, url: str, seed: int) -> float:
    """Seconds from sending a streamed request to its first `data:` event carrying text; reads it to [DONE]."""
    body = {"prefix": PREFIX, "max_new_chars": MAX_NEW_CHARS, "temperature": TEMPERATURE, "seed": seed, "stream": True}
    start = time.perf_counter()
    first, done = None, False
    with client.stream("POST", url + "/complete", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                done = True
            elif first is None and any(c.get("text") for c in json.loads(data).get("choices", [])):
                first = time.perf_counter() - start
    if first is None or not done:
        raise RuntimeError(f"stream ended without text or [DONE] (text seen: {first is not None})")
    return first


def ttfe(url: str, requests: int, seeds: itertools.count) -> dict:
    with httpx.Client(timeout=TIMEOUT) as client:
        times = [first_text_event(client, url, next(seeds)) for _ in range(requests)]
    return {
        "requests": requests,
        "ttfe_p50_ms": ms(percentile(times, 50)),
        "ttfe_p99_ms": ms(percentile(times, 99)),
        "ttfe_max_ms": ms(max(times)),
    }


def single_request(url: str, repeats: int) -> dict:
    """One client, greedy, SINGLE_CHARS new characters per request: median chars/s over `repeats`."""
    body = {"prefix": PREFIX, "max_new_chars": SINGLE_CHARS, "temperature": 0.0}
    rates = []
    with httpx.Client(timeout=TIMEOUT) as client:
        for _ in range(repeats):
            t = time.perf_counter()
            r = client.post(url + "/complete", json=body)
            elapsed = time.perf_counter() - t
            r.raise_for_status()
            rates.append(r.json()["usage"]["completion_chars"] / elapsed)
    rate = statistics.median(rates)
    return {
        "new_chars": SINGLE_CHARS,
        "repeats_median_of": repeats,
        "single_request_1000_chars_per_s": round(rate, 1),
        "all_chars_per_s": [round(x, 1) for x in rates],
        "target_chars_per_s": SINGLE_TARGET_CHARS_PER_S,
        "meets_target": rate >= SINGLE_TARGET_CHARS_PER_S,
    }


def warm_up(url: str) -> None:
    """A couple of uncounted requests so first-call costs do not land in any measurement."""
    with httpx.Client(timeout=TIMEOUT) as client:
        for seed in range(2):
            body = {"prefix": PREFIX, "max_new_chars": MAX_NEW_CHARS, "temperature": TEMPERATURE, "seed": seed}
            client.post(url + "/complete", json=body).raise_for_status()


# ---- driver -------------------------------------------------------------------------------------


def serve_mode(
    store: Path,
    batching: bool,
    args,
    roofline: float,
    seeds: itertools.count,
    precision: str = "auto",
    clients: list[int] | None = None,
    probes: bool = True,
) -> tuple[list, dict]:
    """One server: probes (batching on only), then every client count. Returns load rows and probe results."""
    env = {
        **SERVER_ENV,
        "CHARRNN_DEVICE": args.device,
        "CHARRNN_BATCHING": "true" if batching else "false",
        "CHARRNN_DECODE_PRECISION": precision,
    }
    found: dict = {}
    with Server(store, env=env) as server:
        warm_up(server.url)
        dtype = httpx.get(server.url + "/health").json()["decode_dtype"]
        if batching and probes:
            log.info("batching on: single request and time to first event")
            found["single_request"] = single_request(server.url, args.single_repeats)
            found["time_to_first_event"] = ttfe(server.url, args.ttfe_requests, seeds)
        rows = []
        for n in clients or args.clients:
            log.info("batching %s, %s, %d clients", "on" if batching else "off", dtype, n)
            load = run_load(server.url, n, args.seconds, args.warmup, args.client_procs)
            rows.append({"decode_dtype": dtype, **load_row(batching, n, load, args.seconds, roofline)})
            log.info("  %s", rows[-1])
        if batching and probes:  # the same load, a client in four each asking log-probabilities, a regex, penalties
            n = max(clients or args.clients)
            log.info("batching on, %s, %d clients with mixed options", dtype, n)
            load = run_load(server.url, n, args.seconds, args.warmup, args.client_procs, mixed=True)
            found["mixed_options"] = {
                "options_by_client_mod_4": MIXED_OPTIONS,
                "decode_dtype": dtype,
                **load_row(batching, n, load, args.seconds, roofline),
            }
            log.info("  %s", found["mixed_options"])
    return rows, found


def summary(rows: list[dict], clients: int, roofline: float, matmul: float, flops_per_char: int) -> dict:
    at = {r["batching"]: r for r in rows if r["clients"] == clients}
    on, off = at[True]["aggregate_chars_per_s"], at[False]["aggregate_chars_per_s"]
    return {
        "at_clients": clients,
        "aggregate_chars_per_s_batching_on": on,
        "aggregate_chars_per_s_batching_off": off,
        "batching_speedup": round(on / off, 2) if off else None,
        "roofline_chars_per_s": round(roofline, 1),
        "roofline_fraction_batching_on": at[True]["roofline_fraction"],
        "roofline_fraction_batching_off": at[False]["roofline_fraction"],
        "matmul_gflop_per_s": round(matmul / 1e9, 2),
        "flops_per_char": flops_per_char,
        "p99_latency_ms_batching_on": at[True]["latency_p99_ms"],
        "errors_batching_on": at[True]["errors"],
        "decode_dtype": at[True]["decode_dtype"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per (batching, clients)")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds before each window")
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrency levels")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora" / "shakespeare_train.txt")
    parser.add_argument("--client-procs", type=int, default=4, help="processes the clients are spread over")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="CHARRNN_DECODE_PRECISION"
    )
    parser.add_argument("--device", default="cpu", help="the servers' CHARRNN_DEVICE: cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="smoke run of about 20 s")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.ttfe_requests, args.single_repeats, args.matmul_repeats = 20, 5, 10
    if args.quick:
        args.seconds, args.warmup, args.clients = 1.0, 0.3, [1, 8]
        args.ttfe_requests, args.single_repeats, args.matmul_repeats = 5, 2, 3
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args()
    started = time.perf_counter()
    device = resolve_device(args.device)
    size = 4096 if device.type == "cuda" else 1024  # a GPU needs a larger product to reach its rate
    matmul = matmul_flops_per_s(size, args.matmul_repeats, device=str(device))
    matmul_bf16 = matmul_flops_per_s(size, args.matmul_repeats, torch.bfloat16, str(device))
    seeds = itertools.count(1000)
    top = [max(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        cfg = build_store(store, args.corpus)
        roofline = matmul / cfg.flops_per_char()
        rows_on, probes = serve_mode(store, True, args, roofline, seeds, args.precision)
        rows_off, _ = serve_mode(store, False, args, roofline, seeds, args.precision)
        # the same at float32 throughout: what bf16 adds, and batching's gain over the fastest batching-off
        ref_on, _ = serve_mode(store, True, args, roofline, seeds, "fp32", top, probes=False)
        ref_off, _ = serve_mode(store, False, args, roofline, seeds, "fp32", top)
    rows = rows_on + rows_off
    best_off = max(rows_off[-1]["aggregate_chars_per_s"], ref_off[0]["aggregate_chars_per_s"])
    result = {
        "bench": "serve",
        "settings": {
            "model": cfg.to_json() | {"name": MODEL_NAME, "weights": "untrained, build_model seed 0 (speed only)"},
            "flops_per_char": cfg.flops_per_char(),
            "matmul_gflop_per_s": round(matmul / 1e9, 2),
            "matmul": f"float32 {size}x{size} @ {size}x{size} on {device}, median of {args.matmul_repeats}",
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "roofline_chars_per_s": round(roofline, 1),
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "clients": args.clients,
            "client_processes": args.client_procs,
            "torch_threads": torch.get_num_threads(),
            "prefix": PREFIX,
            "max_new_chars": MAX_NEW_CHARS,
            "temperature": TEMPERATURE,
            "server_env": SERVER_ENV,
            "decode_precision": args.precision,
            "counting": "requests ending inside the window; errors over the whole run incl. warm-up and drain; "
            "client starts staggered over the first half of the warm-up",
            "quick": args.quick,
        },
        "results": rows,
        "float32_reference": ref_on + ref_off,
        **probes,
        "summary": {
            **summary(rows, max(args.clients), roofline, matmul, cfg.flops_per_char()),
            "batching_speedup_vs_fastest_off": round(rows_on[-1]["aggregate_chars_per_s"] / best_off, 2),
            "float32_batching_speedup": round(
                ref_on[0]["aggregate_chars_per_s"] / max(ref_off[0]["aggregate_chars_per_s"], 1e-9), 2
            ),
            "float32_roofline_fraction_batching_on": ref_on[0]["roofline_fraction"],
            "bf16_matmul_gflop_per_s": round(matmul_bf16 / 1e9, 2),
            "bf16_roofline_chars_per_s": round(matmul_bf16 / cfg.flops_per_char(), 1),
            "mixed_options_chars_per_s": probes["mixed_options"]["aggregate_chars_per_s"],
            "mixed_options_vs_plain": round(
                probes["mixed_options"]["aggregate_chars_per_s"] / max(rows_on[-1]["aggregate_chars_per_s"], 1e-9), 3
            ),
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
