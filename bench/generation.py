"""Tutorial sampler (baseline) vs the service's decoder, on the same weights; prints one JSON object."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from app.devserver import Server
from app.lm import default
from app.lm.constraint import compile_regex
from app.lm.generate import generate
from app.lm.model import CharRNN, ModelConfig
from app.lm.sampling import SamplingParams
from app.lm.train import build_model, train_on_text
from app.lm.vocab import Vocab

ROOT = Path(__file__).resolve().parent.parent


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
            x = torch.from_numpy(features)
        else:
            x = model.embed(torch.from_numpy(ids))
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


def step_costs(model: CharRNN, vocab: Vocab, prefix: str, pattern: str, new_chars: int, repeats: int) -> dict:
    """Microseconds per generated character with each sampler option beside plain greedy decoding,
    on one stream (the same steps, so the difference is the option's own per-step cost)."""
    automaton = compile_regex(pattern, vocab)
    cases = {
        "greedy": (SamplingParams(max_new_chars=new_chars), None),
        "t0.8_topk40": (SamplingParams(max_new_chars=new_chars, temperature=0.8, top_k=40), None),
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
            automaton,
        ),
    }
    out: dict = {"pattern": pattern, "new_chars": new_chars}
    for name, (params, constraint) in cases.items():
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            [seq] = generate(model, vocab, prefix, params, seed=1, constraint=constraint)
            runs.append((time.perf_counter() - t) / max(seq.steps, 1))
        out[name + "_us_per_char"] = round(statistics.median(runs) * 1e6, 1)
    plain = out["greedy_us_per_char"]
    out["extra_us_over_greedy"] = {k: round(v - plain, 1) for k, v in out.items() if k.endswith("_us_per_char")}
    return out


def http_default_model(new_chars: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as store, Server(store) as server, httpx.Client(timeout=120) as client:
        body = {"prefix": "good", "max_new_chars": new_chars}
        client.post(server.url + "/complete", json=body)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            r = client.post(server.url + "/complete", json=body)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["usage"]["completion_chars"] == new_chars
    return new_chars / statistics.median(times)


def first_event_seconds(client: httpx.Client, url: str, body: dict) -> float:
    """Seconds from sending a streamed completion to its first event with text."""
    t = time.perf_counter()
    with client.stream("POST", url + "/complete", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and '"text": "' in line and '"text": ""' not in line:
                return time.perf_counter() - t
    raise RuntimeError("no text arrived")


def http_prefix_cache(prefix_chars: int, repeats: int) -> dict:
    """Time to the first streamed character for a long prefix: sent once (read whole), then again
    (resumed from the prefix cache), with the cache on and off, on the default model over HTTP."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("hey how are you good i am fine have a nice day "))
    out: dict = {"prefix_chars": prefix_chars}
    for setting, label in (("64000000", "cache_on"), ("0", "cache_off")):
        firsts, seconds = [], []
        with (
            tempfile.TemporaryDirectory() as store,
            Server(store, env={"CHARRNN_PREFIX_CACHE_BYTES": setting}) as server,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="200,2000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefix-chars", type=int, default=50_000, help="long prefix for the prefix-cache figure")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]

    trained = train_on_text(sentences=default.SENTENCES, config=default.TRAIN_CONFIG, **default.MODEL_KWARGS)
    tiny, tiny_vocab = trained.model, trained.vocab
    corpus = (ROOT.parent / "shared" / "corpora" / "shakespeare_train.txt").read_text()
    vocab = Vocab.from_text(corpus)
    lstm_cfg = ModelConfig(vocab_size=vocab.size, cell="lstm", hidden_size=256, num_layers=2, encoding="embedding")
    lstm = build_model(lstm_cfg, seed=0).eval()

    default_rows = compare(tiny, tiny_vocab, "good", lengths, args.repeats)
    lstm_rows = compare(lstm, vocab, "ROMEO:\n", lengths, args.repeats)
    http_len = max(lengths)
    costs = {
        "default_model": step_costs(tiny, tiny_vocab, "good", "[a-z ]+", http_len, args.repeats),
        "lstm_2x256_embedding": step_costs(
            lstm, vocab, "ROMEO:\n", "([A-Za-z]+[ ,.;:!?'\n-]*)+", http_len, args.repeats
        ),
    }
    http = http_default_model(http_len, args.repeats)
    prefix_cache = http_prefix_cache(args.prefix_chars, args.repeats)
    tutorial_same_len = next(r for r in default_rows if r["new_chars"] == http_len)["baseline_tutorial_chars_per_s"]
    print(
        json.dumps(
            {
                "bench": "generation",
                "settings": {
                    "greedy": True,
                    "repeats_median_of": args.repeats,
                    "torch_threads": torch.get_num_threads(),
                    "baseline": "tutorial sample(): whole text re-run per character (O(n^2))",
                    "lstm": lstm_cfg.to_json() | {"weights": "untrained, seed 0 (speed only)"},
                },
                "default_model": default_rows,
                "lstm_2x256_embedding": lstm_rows,
                "sampler_step_costs": costs,
                "prefix_cache_time_to_first_char": prefix_cache,
                "default_model_http": {
                    "new_chars": http_len,
                    "http_chars_per_s": round(http, 1),
                    "tutorial_chars_per_s": tutorial_same_len,
                    "ratio_vs_tutorial": round(http / tutorial_same_len, 1),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
