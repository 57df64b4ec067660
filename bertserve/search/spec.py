"""Index specs: Faiss factory strings, the `auto` choice, and per-call search parameters.

A spec names the index the way Faiss does (``index_factory`` strings), so every Faiss index type is
reachable without bertserve listing them. This module only reasons about Faiss objects; it knows nothing
about ids, metadata or files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import faiss

from bertserve.errors import BadInput, BadInputType

METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor")
# Largest value of each: Faiss sizes its work by them (efSearch candidates per query, k_factor x k
# refined hits) and stores them in C ints, so a client's 10**30 was an OverflowError, 10**8 a heap of 1 GB.
# Far above any useful setting: nprobe beyond nlist is cut to nlist by Faiss, efSearch beyond a few
# thousand no longer raises recall.
SEARCH_PARAM_MAX = {"nprobe": 1 << 20, "efSearch": 1 << 15, "k_factor": 1000}

# Faiss's own guidance: below this many points per centroid k-means quality drops (it warns at 39).
POINTS_PER_CENTROID = 39
# Below this size an exact scan is fast enough that no approximate index is worth its recall loss.
AUTO_EXACT_BELOW = 50_000
AUTO_HNSW_M = 32
AUTO_EF_SEARCH = 128
AUTO_NPROBE = 32
# settings `auto` tries, cheapest first, when it tunes an index for recall
CALIBRATE_STEPS = {"efSearch": (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
                   "nprobe": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)}


@dataclass
class IndexSpec:
    """What a collection asks of its index; ``factory`` is a Faiss factory string or ``"auto"``."""

    factory: str = "auto"
    metric: str = "cosine"
    params: dict = field(default_factory=dict)  # default search parameters, overridable per call
    memory_budget: int | None = None  # bytes the index may use; only `auto` looks at it

    def __post_init__(self):
        if self.metric not in METRICS:
            raise BadInput(f"unknown metric {self.metric!r}; expected one of {sorted(METRICS)}")
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise BadInput("index spec must be a non-empty Faiss factory string or 'auto'")
        self.params = check_params(self.params)
        if self.memory_budget is not None and (not isinstance(self.memory_budget, int) or self.memory_budget <= 0):
            raise BadInput("memory_budget must be a positive number of bytes")


def check_params(params: dict | None) -> dict:
    """Validate search parameters (names and positive values) and return a clean copy."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadInput("search params must be a mapping like {'nprobe': 16}")
    out = {}
    for name, value in params.items():
        if name not in SEARCH_PARAMS:
            raise BadInput(f"unknown search parameter {name!r}; expected one of {list(SEARCH_PARAMS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise BadInput(f"search parameter {name} must be a positive number, got {value!r}")
        if value > SEARCH_PARAM_MAX[name]:
            raise BadInput(f"search parameter {name} is at most {SEARCH_PARAM_MAX[name]}, got {value!r}")
        out[name] = float(value) if name == "k_factor" else int(value)
    return out


def build_index(factory: str, dim: int, metric: str) -> faiss.Index:
    """Make an empty Faiss index; an invalid factory string becomes a ValueError naming it."""
    if factory == "auto":
        raise BadInput("'auto' must be resolved with auto_factory() before building")
    try:
        index = faiss.index_factory(int(dim), factory, METRICS[metric])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        reason = reason.split("Error: ", 1)[-1]
        raise BadInput(f"invalid index spec {factory!r} for dim {dim}: {reason}") from None
    for part in _parts(index):
        # index_factory turns polysemous training on for PQ; it multiplies training time for no gain
        # in plain ADC search (seen: 44 s vs 7.7 s on 69k vectors).
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    return index


def _parts(index: faiss.Index) -> list:
    """The index and every index nested in it (pre-transform, refine, HNSW storage), downcast."""
    out, todo = [], [index]
    while todo:
        part = faiss.downcast_index(todo.pop())
        out.append(part)
        for attr in ("index", "base_index", "storage"):
            sub = getattr(part, attr, None)
            if isinstance(sub, faiss.Index):
                todo.append(sub)
    return out


def core(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transform chain (PCA, OPQ): the one that holds the vectors."""
    part = faiss.downcast_index(index)
    while isinstance(part, faiss.IndexPreTransform):
        part = faiss.downcast_index(part.index)
    return part


def takes_ids(index: faiss.Index) -> bool:
    """True when the index stores the ids it is given (IVF); otherwise labels are insertion positions."""
    return isinstance(core(index), faiss.IndexIVF)


def removable(index: faiss.Index) -> bool:
    """True when Faiss can physically remove vectors (IVF and flat-code indexes); HNSW and refine cannot."""
    return isinstance(core(index), (faiss.IndexIVF, faiss.IndexFlatCodes))


def train_size(index: faiss.Index, dim: int, minimum: bool = False) -> int:
    """How many vectors the index wants before training (0 when it needs none).

    By default Faiss's recommended 39 points per centroid; `minimum=True` gives the least it accepts
    (one point per centroid), for an explicit rebuild of a small collection.
    """
    if index.is_trained:
        return 0
    per_centroid = 1 if minimum else POINTS_PER_CENTROID
    need = dim  # PCA / OPQ need at least as many vectors as dimensions
    for part in _parts(index):
        if isinstance(part, faiss.IndexIVF):
            need = max(need, per_centroid * part.nlist)
        pq = getattr(part, "pq", None)
        if isinstance(pq, faiss.ProductQuantizer):
            need = max(need, per_centroid * pq.ksub)
    return need


def auto_factory(n: int, dim: int, memory_budget: int | None = None) -> str:
    """Faiss's index guidelines by collection size and memory.

    Exact search below tens of thousands of vectors; HNSW above while the full vectors plus graph fit
    the budget; IVF with PQ codes (re-ranked with the full vectors when those fit) when memory is short
    or the collection is very large.
    """
    flat_bytes = 4 * dim * max(n, 1)
    if n < AUTO_EXACT_BELOW and (memory_budget is None or flat_bytes <= memory_budget):
        return "Flat"
    nlist = _nlist(n)
    hnsw_bytes = flat_bytes + 8 * AUTO_HNSW_M * max(n, 1)
    if n <= 2_000_000 and (memory_budget is None or hnsw_bytes <= memory_budget):
        return f"HNSW{AUTO_HNSW_M}"
    m = _pq_m(dim, n, memory_budget)
    if memory_budget is None or flat_bytes + m * n <= memory_budget:
        return f"IVF{nlist},PQ{m},RFlat"
    return f"IVF{nlist},PQ{m}"


def auto_params(factory: str) -> dict:
    """Default search parameters for a factory string chosen by `auto`."""
    params = {}
    if "IVF" in factory:
        params["nprobe"] = AUTO_NPROBE
    if "HNSW" in factory:
        params["efSearch"] = AUTO_EF_SEARCH
    if "RFlat" in factory or "Refine" in factory:
        params["k_factor"] = 4.0
    return params


def _nlist(n: int) -> int:
    # 4*sqrt(n) to 16*sqrt(n) lists is Faiss's range, capped so each list trains on 39 points;
    # a power of two.
    want = min(8 * math.sqrt(max(n, 1)), max(n, 1) / POINTS_PER_CENTROID)
    return max(1, 2 ** math.floor(math.log2(max(want, 1))))


def _pq_m(dim: int, n: int, memory_budget: int | None) -> int:
    """Largest sub-quantizer count that divides dim, stays <= dim/2 and fits the budget."""
    choices = [m for m in range(1, dim + 1) if dim % m == 0 and m <= max(1, dim // 2)]
    for m in sorted(choices, reverse=True):
        if memory_budget is None or m * n <= memory_budget:
            return m
    return choices[0]


def factory_tier(factory: str) -> int:
    """Order of `auto` choices, so a growing collection only ever moves to a bigger kind of index."""
    if factory == "Flat":
        return 0
    if factory.startswith("HNSW"):
        return 1
    return 2


def search_parameters(index: faiss.Index, params: dict, sel: faiss.IDSelector | None):
    """Build the nested SearchParameters Faiss wants for this index, with the selector innermost.

    Returns None when no parameter is needed. Raises TypeError when the index cannot take a selector
    (PQ, LSH): the caller then filters results itself.
    """
    keep = []  # SWIG does not keep nested parameter objects alive; we must

    def make(part):
        part = faiss.downcast_index(part)
        if isinstance(part, faiss.IndexPreTransform):
            inner = make(part.index)
            if inner is None:
                return None
            p = faiss.SearchParametersPreTransform()
            p.index_params = inner
        elif isinstance(part, faiss.IndexRefine):
            inner = make(part.base_index)
            p = faiss.IndexRefineSearchParameters()
            p.k_factor = float(params.get("k_factor", part.k_factor))
            if inner is not None:
                p.base_index_params = inner
        elif isinstance(part, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = int(params.get("nprobe", part.nprobe))
            if sel is not None:
                p.sel = sel
        elif isinstance(part, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(params.get("efSearch", part.hnsw.efSearch))
            if sel is not None:
                p.sel = sel
        elif isinstance(part, (faiss.IndexFlat, faiss.IndexScalarQuantizer)):
            if sel is None:
                return None
            p = faiss.SearchParameters()
            p.sel = sel
        else:
            if sel is not None:
                raise BadInputType(f"{type(part).__name__} cannot filter by id inside Faiss")
            return None
        keep.append(p)
        return p

    top = make(index)
    return top, keep
