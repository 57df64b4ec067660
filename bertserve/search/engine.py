"""One Faiss index plus what Faiss itself lacks: internal-id labels, masked deletes, safe files.

Labels: IVF indexes store the internal ids we give them. Every other index numbers vectors by
insertion position, so `slots[position]` holds the internal id; internal ids only grow, so `slots`
stays sorted and a position is found by binary search. Indexes that cannot remove vectors (HNSW,
refine) keep deleted ids in `masked` until the next rebuild.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from bertserve.errors import BadInput, Unavailable
from bertserve.search import spec as specs

# A filter this selective is answered by an exact scan of the matching vectors: cheaper than
# searching the index with a selector, and exact.
EXACT_MATCHES_BELOW = 2048
# Over-fetch factor for indexes that cannot filter inside Faiss (PQ, LSH).
OVERFETCH = 4
# distinct search settings whose Faiss parameter objects are kept for reuse
PARAMS_KEPT = 16

# `auto` tunes its search parameter on this many stored vectors to reach this recall@10. The target is
# above the 0.95 promised because stored vectors flatter the index: on GloVe 400k a 0.95 target chose
# efSearch 64, which gave 0.940 on held-out queries (efSearch 128: 0.976).
CALIBRATE_QUERIES = 200
CALIBRATE_K = 10
CALIBRATE_RECALL = 0.97

ExactSearch = Callable[[np.ndarray, int, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray]"]


class VectorIndex:
    def __init__(self, factory: str, dim: int, metric: str, index: faiss.Index | None = None,
                 slots: np.ndarray | None = None):
        self.factory, self.dim, self.metric = factory, dim, metric
        self.index = index if index is not None else specs.build_index(factory, dim, metric)
        self.by_id = specs.takes_ids(self.index)
        self.can_remove = specs.removable(self.index)
        self.slots = slots if slots is not None else np.empty(0, dtype=np.int64)
        self.masked = np.empty(0, dtype=np.int64)
        self._unfiltered_params = {}  # search parameters without a selector, reused across calls

    # ---- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, factory, dim, metric, iids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        self = cls(factory, dim, metric)
        if not self.index.is_trained:
            self.index.train(vectors)
        self.add(iids, vectors)
        return self

    def add(self, iids: np.ndarray, vectors: np.ndarray):
        if len(iids) == 0:
            return
        if self.by_id:
            self.index.add_with_ids(vectors, iids)
        else:
            self.index.add(vectors)
            self.slots = np.concatenate([self.slots, iids])

    def remove(self, iids: np.ndarray):
        """Remove (or mask) internal ids; ids the index does not hold are ignored."""
        if len(iids) == 0:
            return
        if self.by_id:
            self.index.remove_ids(np.ascontiguousarray(iids, dtype=np.int64))
            return
        pos = np.searchsorted(self.slots, iids)
        pos = pos[(pos < len(self.slots)) & (self.slots[np.minimum(pos, len(self.slots) - 1)] == iids)]
        if len(pos) == 0:
            return
        if self.can_remove:
            self.index.remove_ids(faiss.IDSelectorBatch(pos.astype(np.int64)))
            self.slots = np.delete(self.slots, pos)
        else:
            self.masked = np.union1d(self.masked, self.slots[pos])

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.masked)

    # ---- searching ---------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, params: dict, allowed: np.ndarray | None,
               exact: ExactSearch) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, internal ids, -1 padded) among `allowed` ids (None: all live ids).

        Rows that come back with fewer than k hits although more eligible items exist (an IVF probe
        or HNSW walk that found too few matches) are answered again by an exact scan.
        """
        eligible = self.live if allowed is None else len(allowed)
        if allowed is not None and eligible <= EXACT_MATCHES_BELOW:
            return exact(queries, k, allowed)
        if allowed is not None:
            sel = faiss.IDSelectorBatch(self._labels(allowed))
            keep_alive = [sel]
        elif len(self.masked):
            inner = faiss.IDSelectorBatch(self._labels(self.masked))
            sel = faiss.IDSelectorNot(inner)
            keep_alive = [inner, sel]
        else:
            sel, keep_alive = None, []
        try:
            sp, nested = self._parameters(params) if sel is None else specs.search_parameters(self.index, params, sel)
            scores, labels = self.index.search(queries, k, params=sp)
            iids = self._iids(labels)
        except TypeError:
            scores, iids = self._search_overfetch(queries, k, params, allowed)
        del keep_alive
        short = (iids >= 0).sum(axis=1) < min(k, eligible)
        if short.any():
            scores[short], iids[short] = exact(queries[short], k, allowed)
        return scores, iids

    def _search_overfetch(self, queries, k, params, allowed):
        """For indexes that cannot filter inside Faiss: fetch more, then drop ineligible hits."""
        kk = min(self.ntotal, k * OVERFETCH + len(self.masked)) if allowed is not None else k + len(self.masked)
        sp, nested = self._parameters(params)
        scores, labels = self.index.search(queries, max(kk, k), params=sp)
        iids = self._iids(labels)
        ok = iids >= 0
        if allowed is not None:
            ok &= np.isin(iids, allowed)
        if len(self.masked):
            ok &= ~np.isin(iids, self.masked)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
        iids = np.where(np.take_along_axis(ok, order, axis=1), np.take_along_axis(iids, order, axis=1), -1)
        if iids.shape[1] < k:
            pad = k - iids.shape[1]
            iids = np.pad(iids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
        return scores, iids

    def _parameters(self, params: dict):
        # Building SWIG parameter objects costs as much as a fast single-query search; they are
        # read-only during a search, so one per distinct setting is shared. Clients choose the settings
        # (any nprobe or ef), so only the last PARAMS_KEPT are kept.
        key = tuple(sorted(params.items()))
        found = self._unfiltered_params.pop(key, None)
        if found is None:
            found = specs.search_parameters(self.index, params, None)
        self._unfiltered_params[key] = found  # last used last: the first is the one to forget
        while len(self._unfiltered_params) > PARAMS_KEPT:
            del self._unfiltered_params[next(iter(self._unfiltered_params))]
        return found

    def _labels(self, iids: np.ndarray) -> np.ndarray:
        if self.by_id:
            return np.ascontiguousarray(iids, dtype=np.int64)
        pos = np.searchsorted(self.slots, iids)
        found = (pos < len(self.slots)) & (self.slots[np.minimum(pos, max(len(self.slots) - 1, 0))] == iids)
        return pos[found].astype(np.int64)

    def _iids(self, labels: np.ndarray) -> np.ndarray:
        if self.by_id or len(self.slots) == 0:
            return labels
        return np.where(labels >= 0, self.slots[np.maximum(labels, 0)], -1)

    # ---- files -------------------------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write index and slots to `path` atomically and durably; returns the file's sha256."""
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, faiss.serialize_index(self.index))
                np.save(f, self.slots)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            # the items are safe in the store; only this snapshot (a cache of them) was not written
            raise Unavailable(f"could not save {path.name}: {exc.strerror}; is the disk full?") from exc
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return file_sha256(path)

    @classmethod
    def load(cls, path: Path, sha256: str, factory: str, dim: int, metric: str) -> "VectorIndex":
        """Read a saved index; raises OSError/ValueError when it is missing, altered or unreadable."""
        if file_sha256(path) != sha256:
            raise BadInput(f"checksum mismatch for {path.name}")
        with open(path, "rb") as f:
            data = np.load(f)
            slots = np.load(f)
        index = faiss.deserialize_index(data)
        if index.d != dim:
            raise BadInput(f"{path.name} holds dimension {index.d}, expected {dim}")
        return cls(factory, dim, metric, index=index, slots=slots)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def calibrate(vindex: VectorIndex, iids: np.ndarray, vectors: np.ndarray, metric: str) -> dict:
    """Pick the cheapest search setting of an `auto` index that reaches CALIBRATE_RECALL recall@10.

    Stored vectors serve as queries (each one's own hit left out of both answers), measured against
    an exact scan; an honest estimate because the query distribution is the collection's own.
    """
    factory = vindex.factory
    params = specs.auto_params(factory)
    knob = "efSearch" if factory.startswith("HNSW") else "nprobe" if "IVF" in factory else None
    if knob is None or len(iids) <= CALIBRATE_K + 1:
        return params
    pick = np.random.default_rng(0).choice(len(iids), min(CALIBRATE_QUERIES, len(iids)), replace=False)
    queries = vectors[pick]
    flat = faiss.IndexFlat(vectors.shape[1], specs.METRICS[metric])
    flat.add(vectors)
    truth = iids[flat.search(queries, CALIBRATE_K + 1)[1]]

    def exact(q, k, allowed):
        scores, pos = flat.search(q, k)
        return scores, np.where(pos >= 0, iids[np.maximum(pos, 0)], -1)

    for value in specs.CALIBRATE_STEPS[knob]:
        params[knob] = value
        _, found = vindex.search(queries, CALIBRATE_K + 1, params, None, exact)
        hits = [len((set(f) & set(t)) - {self_id}) / CALIBRATE_K
                for f, t, self_id in zip(found.tolist(), truth.tolist(), iids[pick].tolist())]
        if np.mean(hits) >= CALIBRATE_RECALL:
            break
    return params
