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


def rrf(lists: dict[str, Ranked], weights: dict[str, float], rrf_k: float = RRF_K) -> dict[int, float]:
    fused: dict[int, float] = {}
    for part, ranked in lists.items():
        w = weights[part]
        for rank, iid in enumerate(ranked.iids.tolist(), start=1):
            fused[iid] = fused.get(iid, 0.0) + w / (rrf_k + rank)
    return fused


def weighted(lists: dict[str, Ranked], weights: dict[str, float]) -> dict[int, float]:
    fused: dict[int, float] = {}
    for part, ranked in lists.items():
        if len(ranked.iids) == 0:
            continue
        s = ranked.scores.astype(np.float64)
        if not ranked.higher_is_better:
            s = -s
        lo, hi = s.min(), s.max()
        norm = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
        for iid, v in zip(ranked.iids.tolist(), norm.tolist()):
            fused[iid] = fused.get(iid, 0.0) + weights[part] * v
    return fused


def fuse(lists: dict[str, Ranked], k: int, fusion: str, weights: dict[str, float], rrf_k: float = RRF_K) -> Fused:
    """Top k of the fused lists; ties go to the item ranked better in the dense list, then by id."""
    fused = rrf(lists, weights, rrf_k) if fusion == "rrf" else weighted(lists, weights)
    where = {part: {iid: (pos, float(s)) for pos, (iid, s) in enumerate(zip(r.iids.tolist(), r.scores.tolist()))}
             for part, r in lists.items()}
    first = where.get("dense", {})
    order = sorted(fused, key=lambda i: (-fused[i], first.get(i, (len(first),))[0], i))[:k]
    parts = []
    for iid in order:
        row = {}
        for part in PARTS:
            pos = where.get(part, {}).get(iid)
            row[part] = pos[1] if pos else None
            row[f"{part}_rank"] = pos[0] + 1 if pos else None
        parts.append(row)
    return Fused(np.array(order, np.int64), np.array([fused[i] for i in order], np.float64), parts)
