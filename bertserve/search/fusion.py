"""Fusing ranked lists from the dense and the keyword retrievers into one.

Reciprocal rank fusion (Cormack, Clarke and Buettcher, 2009): an item's fused score is the sum over the
lists it appears in of weight / (rrf_k + rank), rank counted from 1; it needs no score calibration,
which is why Elasticsearch, OpenSearch and Milvus all offer it. Weighted fusion instead min-max
normalizes each list's scores to [0, 1] within the query (best = 1) and adds them with the weights; an
item missing from a list gets 0 from it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bertserve.errors import BadInput

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "weighted")
PARTS = ("dense", "bm25")
RRF_K = 60
# Candidates each retriever hands to the fusion (Elasticsearch's rank_window_size)
WINDOW = 100


class Ranked(NamedTuple):
    """One retriever's answer to one query: internal ids best first, their scores, and whether higher
    scores are better (False for l2 distances)."""
    iids: np.ndarray
    scores: np.ndarray
    higher_is_better: bool = True


class Fused(NamedTuple):
    iids: np.ndarray        # best first
    scores: np.ndarray      # fused score
    parts: list[dict]       # per item: {"dense": score | None, "bm25": ..., "dense_rank": ..., "bm25_rank": ...}


def check_search_mode(mode, fusion, rrf_k, weights) -> dict[str, float]:
    """Validate the fusion arguments; returns the weight of each part."""
    if mode not in MODES:
        raise BadInput(f"mode must be one of {MODES}, got {mode!r}")
    if fusion not in FUSIONS:
        raise BadInput(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not rrf_k >= 0:
        raise BadInput(f"rrf_k must be a number >= 0, got {rrf_k!r}")
    default = 1.0 if fusion == "rrf" else 0.5
    if weights is None:
        return {p: default for p in PARTS}
    if not isinstance(weights, dict) or set(weights) - set(PARTS):
        raise BadInput(f"weights must be an object with keys among {PARTS}, e.g. {{\"dense\": 0.7, \"bm25\": 0.3}}")
    out = {}
    for p in PARTS:
        w = weights.get(p, default)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise BadInput(f"weights.{p} must be a finite number >= 0, got {w!r}")
        out[p] = float(w)
    if not any(out.values()):
        raise BadInput("at least one weight must be above 0")
    return out


def text_queries(query, mode: str) -> tuple[bool, list[str]]:
    """(single, texts) of a bm25/hybrid search, which needs text: one string or a list of them."""
    single = isinstance(query, str)
    texts = [query] if single else query
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(q, str) for q in texts):
        raise BadInput(f"mode {mode!r} needs a text query or a list of texts, not vectors")
    return single, list(texts)


def check_window(window, k: int) -> int:
    if window is None:
        return max(int(k), WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or window < k:
        raise BadInput(f"window must be an integer >= k ({k}), got {window!r}")
    return window


def fuse(lists: dict[str, Ranked], k: int, fusion: str, weights: dict[str, float], rrf_k: float = RRF_K) -> Fused:
    """Top k of the fused lists; ties go to the item ranked better in the dense list, then by id.

    `rrf`: sum of weight / (rrf_k + rank); `weighted`: sum of weight * min-max normalized score.
    Every search in mode hybrid pays this once per query, so it is written as a few whole-array steps."""
    names = [p for p in PARTS if p in lists]
    iids = [np.asarray(lists[p].iids, np.int64) for p in names]
    every = np.concatenate(iids)
    ids, where = np.unique(every, return_inverse=True)
    gains, ranks, scores = [], np.zeros((len(names), len(ids)), np.int64), np.full((len(names), len(ids)), np.nan)
    start = 0
    for j, p in enumerate(names):
        r, n = lists[p], len(iids[j])
        at = where[start:start + n]  # an id appears at most once per list
        start += n
        rank = np.arange(1, n + 1)
        if fusion == "rrf":
            gains.append(weights[p] / (rrf_k + rank))
        else:
            s = np.asarray(r.scores, np.float64) * (1 if r.higher_is_better else -1)
            lo, hi = (s.min(), s.max()) if n else (0.0, 0.0)
            gains.append(weights[p] * ((s - lo) / (hi - lo) if hi > lo else np.ones(n)))
        ranks[j, at] = rank
        scores[j, at] = r.scores
    fused = np.bincount(where, weights=np.concatenate(gains), minlength=len(ids))
    dense_rank = np.where(ranks[0] > 0, ranks[0], len(ids) + 1) if names[0] == "dense" else np.zeros(len(ids))
    order = np.lexsort((ids, dense_rank, -fused))[:k]
    found = {p: (ranks[j, order].tolist(), scores[j, order].tolist()) for j, p in enumerate(names)}
    parts = []
    for n in range(len(order)):
        row = {}
        for p in PARTS:
            rank = found[p][0][n] if p in found else 0
            row[p] = found[p][1][n] if rank else None
            row[f"{p}_rank"] = rank or None
        parts.append(row)
    return Fused(ids[order], fused[order], parts)
