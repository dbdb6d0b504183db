"""Soak: a real server under mixed traffic while a training job runs and swaps the model; prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from app.devserver import Server

ROOT = Path(__file__).resolve().parent.parent

PROBE = {"prefix": "good", "max_new_chars": 11}  # greedy: one text per model, whatever else runs


class Tally:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.texts_by_model: dict[str, set[str]] = defaultdict(set)
        self.models_seen: list[str] = []

    def error(self, what: str) -> None:
        self.errors.append(what)


async def one(client: httpx.AsyncClient, kind: str, tally: Tally, rng: random.Random) -> None:
    start = time.monotonic()
    try:
        if kind == "health":
            r = await client.get("/health")
            ok = r.status_code == 200
        elif kind == "vocab":
            r = await client.get("/vocab")
            ok = r.status_code == 200
        elif kind == "probe":
            r = await client.post("/complete", json=PROBE)
            ok = r.status_code == 200
            if ok:
                body = r.json()
                tally.texts_by_model[body["model"]].add(body["choices"][0]["text"])
                tally.models_seen.append(body["model"])
        elif kind == "complete":
            body = {"prefix": "h", "max_new_chars": 100, "temperature": 0.8, "seed": rng.randrange(2**31)}
            r = await client.post("/complete", json=body)
            ok = r.status_code == 200 and r.json()["usage"]["completion_chars"] <= 100
        else:  # stream
            body = {"prefix": "good", "max_new_chars": 11, "stream": True}
            text, final = "", None
            async with client.stream("POST", "/complete", json=body) as r:
                ok = r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        event = json.loads(line[6:])
                        if "model" in event:
                            final = event
                        else:
                            text += "".join(c["text"] for c in event["choices"])
            if ok and final is not None:  # a stream is consistent with the whole answer of its model
                tally.texts_by_model[final["model"]].add(PROBE["prefix"] + text)
        if not ok:
            tally.error(f"{kind}: HTTP {r.status_code}")
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        tally.error(f"{kind}: {type(exc).__name__}: {exc}")
        return
    tally.latencies[kind].append(time.monotonic() - start)


async def client_loop(url: str, seconds: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    kinds = ["complete"] * 4 + ["stream"] * 2 + ["probe"] * 2 + ["vocab", "health"]
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            await one(client, rng.choice(kinds), tally, rng)


async def trainer(url: str, delay: float, tally: Tally) -> dict:
    await asyncio.sleep(delay)
    corpus = "good morning, good evening, good night and good luck. " * 200
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        r = await client.post("/train", json={"name": "soaked", "corpus": corpus, "max_seconds": 20, "hidden_size": 64})
        job_id = r.json()["job_id"]
        while True:
            job = (await client.get(f"/train/{job_id}")).json()
            if job["status"] not in ("queued", "running"):
                return {"status": job["status"], "steps": job["step"], "best_val_loss": job["best_val_loss"]}
            await asyncio.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summary(values: list[float]) -> dict:
    return {
        "requests": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(pct(values, 99) * 1000, 1),
    }


async def run(url: str, seconds: float, clients: int) -> dict:
    tally = Tally()
    results = await asyncio.gather(
        trainer(url, seconds / 4, tally), *(client_loop(url, seconds, tally, k) for k in range(clients))
    )
    everything = [x for v in tally.latencies.values() for x in v]
    consistent = all(len(texts) == 1 for texts in tally.texts_by_model.values())
    return {
        "requests": len(everything) + len(tally.errors),
        "errors": len(tally.errors),
        "first_errors": tally.errors[:5],
        "latency_p50_ms": round(statistics.median(everything) * 1000, 1) if everything else None,
        "latency_p99_ms": round(pct(everything, 99) * 1000, 1) if everything else None,
        "by_kind": {
            k: {
                "requests": len(v),
                "p50_ms": round(statistics.median(v) * 1000, 1),
                "p99_ms": round(pct(v, 99) * 1000, 1),
            }
            for k, v in sorted(tally.latencies.items())
        },
        "training_job": results[0],
        "models_seen_in_order": list(dict.fromkeys(tally.models_seen)),
        "responses_consistent_with_their_model": consistent,
        "distinct_texts_by_model": {m: len(t) for m, t in tally.texts_by_model.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store, Server(store, env={"CHARRNN_LOG_LEVEL": "warning"}) as server:
        started = time.monotonic()
        result = asyncio.run(run(server.url, args.seconds, args.clients))
    print(json.dumps({"bench": "soak", "settings": vars(args), **result,
                      "wall_seconds": round(time.monotonic() - started, 1)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
