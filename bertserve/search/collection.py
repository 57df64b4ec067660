"""Collection: texts, vectors, user ids and metadata kept together in one folder that survives crashes.

Folder layout (format version in collection.json):

    collection.json     format version, dim, metric, index spec, default search params, encoder config
    store.sqlite        items (the source of truth) + state, WAL journal with synchronous=FULL
    index-<gen>.faiss   a snapshot of the Faiss index; its generation and sha256 live in store.sqlite
    bm25-<gen>.npz      a snapshot of the BM25 index of the texts (bertserve.search.bm25), kept the same way
    LOCK                held (flock) by the one process that has the collection open

`add` commits to SQLite before it touches Faiss, so an acknowledged item is on disk. On open, items
newer than the snapshot are added again and deletes since then re-applied; a missing or damaged
snapshot is rebuilt from the stored vectors.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from bertserve.errors import AlreadyExists, BadInput, Conflict, MissingFile, NotFound
from bertserve.search import fusion as fusions
from bertserve.search import spec as specs
from bertserve.search.bm25 import BM25Config, BM25Index, write_snapshot
from bertserve.search.cluster import KMeansResult, fit_pca, kmeans
from bertserve.search.embed import Embedder, VectorInput
from bertserve.search.engine import VectorIndex, calibrate, file_sha256, fsync_dir
from bertserve.search.filters import compile_filter
from bertserve.search.inputs import MAX_K, check_dim, check_ids, check_metadata, check_texts, clamp_k, prepare_add
from bertserve.search.store import Store

log = logging.getLogger("bertserve.search")

FORMAT_VERSION = 1
CONFIG = "collection.json"
# Save the index snapshot once this share of it is newer than the file (replayed on open otherwise).
SAVE_FRACTION = 0.2
SAVE_MIN = 20_000
# Training sample cap; Faiss subsamples further per centroid with its own fixed seed.
TRAIN_MAX = 1_000_000


class Hit(NamedTuple):
    id: str
    score: float
    text: str | None
    metadata: dict | None
    # bm25 and hybrid modes: each part's score and rank next to the fused one (None where absent)
    scores: dict | None = None


class Item(NamedTuple):
    id: str
    text: str | None
    metadata: dict
    vector: np.ndarray


# Collections open in this process, by real path: opening one again (a notebook cell run twice) hands
# back the same object with one more handle instead of failing on its own LOCK. Weak, so a collection
# dropped without close() is finalized (and its LOCK freed) as usual.
_OPEN: "weakref.WeakValueDictionary[str, Collection]" = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


class Collection(VectorInput):
    """Open with `Collection.create(path, ...)` or `Collection.open(path)`; not via the constructor.

    Each `open` of a collection this process already has open returns that same object; `close()` gives
    back one handle, and the folder is closed when the last one is.
    """

    max_k = MAX_K  # most hits one search returns; k above it (or above the collection's size) is cut

    def __init__(self, path: Path, config: dict, encoder=None, reembed: bool = False):
        self._handles = 1
        self.store = None
        self.path = path
        self.config = config
        self.dim: int = config["dim"]
        self.spec = specs.IndexSpec(config["index"], config["metric"], config.get("params") or {},
                                    config.get("memory_budget"))
        self.embedder = Embedder(None if reembed else encoder, config.get("encoder"),
                                 config.get("encoder_fingerprint"), f"collection {path}")
        self._lock = threading.RLock()
        self._lockfile = _lock_folder(path)
        try:
            self.store = Store(path / "store.sqlite", self.dim)
            self._names = _Names(self.store.id_map())
            self._auto_params = self.store.state("auto_params", {}) if self.spec.factory == "auto" else {}
            self._unsaved = 0
            self.vindex = self._load_index()
            self.bm25 = self._load_bm25()
            self._after_change()
        except BaseException:
            if self.store is not None:
                self.store.close()
                self.store = None
            os.close(self._lockfile)
            raise

    # ---- creating and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, path, encoder=None, dim: int | None = None, index: str = "auto", metric: str = "cosine",
               params: dict | None = None, memory_budget: int | None = None,
               bm25="standard") -> "Collection":
        """A new collection at `path`. Atomic: it is built in a hidden folder beside `path` and renamed
        into place, so a create that fails (or is killed) leaves no half-made collection behind.

        `bm25`: the keyword index's analyzer (a preset name of bertserve.search.bm25.PRESETS, a dict
        of Analyzer fields, or {"analyzer": ..., "k1": ..., "b": ...}); False for vectors only."""
        path = Path(path)
        bm25_config = BM25Config.of(bm25)
        if (path / CONFIG).exists():
            raise AlreadyExists(f"a collection already exists at {path}")
        spec = specs.IndexSpec(index, metric, params or {}, memory_budget)
        embedder = Embedder(encoder, None)
        if dim is None:
            if encoder is None:
                raise BadInput("give an encoder or dim= to create a collection")
            dim = embedder.dim()
        dim = check_dim(dim)
        if spec.factory != "auto":
            specs.build_index(spec.factory, dim, metric)  # fail now on a bad factory string
        config = {"format_version": FORMAT_VERSION, "dim": dim, "metric": metric, "index": spec.factory,
                  "params": spec.params, "memory_budget": memory_budget, "encoder": embedder.config(),
                  "encoder_fingerprint": embedder.fingerprint(),
                  "bm25": bm25_config.to_dict() if bm25_config else None}
        _build_folder(path, config)
        with _OPEN_LOCK:
            try:
                col = cls(path, config, encoder)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # ours alone: nobody could open it before now
                raise
            _OPEN[_key(path)] = col
        return col

    @classmethod
    def open(cls, path, encoder=None, reembed: bool = False) -> "Collection":
        """Open a collection. Text queries are embedded by `encoder`, which must be the encoder that built it
        (checked by fingerprint; bertserve.errors.Conflict otherwise), or, without one, by that encoder rebuilt
        from the saved config. `reembed=True` embeds every stored text again with `encoder` instead and makes it
        the collection's encoder (see `reembed`)."""
        path = Path(path)
        with _OPEN_LOCK:
            col = _OPEN.get(_key(path))
            if col is None or col.store is None:
                col = cls._open(path, encoder, reembed)
                _OPEN[_key(path)] = col
                return col
            col._handles += 1
        try:  # already open here: the same object, after the same encoder checks a fresh open makes
            if reembed:
                if encoder is None:
                    raise BadInput("reembed=True needs the new encoder")
                col.reembed(encoder)
            elif encoder is not None and col.embedder.encoder is None:
                col.embedder = Embedder(encoder, col.config.get("encoder"), col.config.get("encoder_fingerprint"),
                                        f"collection {path}")
        except BaseException:
            col.close()
            raise
        return col

    @classmethod
    def _open(cls, path: Path, encoder, reembed: bool) -> "Collection":
        try:
            config = json.loads((path / CONFIG).read_text())
        except FileNotFoundError:
            raise MissingFile(f"no collection at {path}") from None
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path / CONFIG} is not valid JSON: {exc}") from None
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise BadInput(f"collection {path} has format version {version}; this bertserve reads {FORMAT_VERSION}")
        if not (path / "store.sqlite").exists():
            # never silently start an empty store under an existing collection
            raise MissingFile(f"collection {path} has lost its store.sqlite (its items); restore it from a backup")
        if not reembed:
            return cls(path, config, encoder)
        if encoder is None:
            raise BadInput("reembed=True needs the new encoder")
        col = cls(path, config, encoder, reembed=True)
        try:
            col.reembed(encoder)
        except BaseException:
            col.close()
            raise
        return col

    def close(self):
        """Give back this handle; the last one saves the index and releases the folder."""
        with _OPEN_LOCK, self._lock:
            if self.store is None:
                return
            self._handles -= 1
            if self._handles > 0:
                return
            try:
                if self._unsaved:
                    self._save_index()
                if self._bm25_unsaved:
                    self._save_bm25()
            finally:
                self.store.close()
                self.store = None
                os.close(self._lockfile)
                if _OPEN.get(_key(self.path)) is self:
                    del _OPEN[_key(self.path)]

    def __del__(self):
        # dropped without close(): free the folder (items are durable; the index replays on next open)
        if getattr(self, "store", None) is not None:
            try:
                self.store.close()
                os.close(self._lockfile)
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- writing -----------------------------------------------------------------------------------
    def add(self, texts=None, ids=None, metadata=None, vectors=None) -> list[str]:
        """Add items; durable once this returns. Returns their ids (generated when not given)."""
        ids, texts, metas, vectors = prepare_add(self, texts, ids, metadata, vectors)
        n = len(ids)
        with self._lock:
            self._check_open()
            iids = self.store.add(ids, texts if texts is not None else [None] * n, metas, vectors)
            self._names.add(iids, ids)
            self.vindex.add(iids, vectors)
            self._bm25_add(iids, texts)
            self._unsaved += n
            self._after_change()
        return ids

    def delete(self, ids) -> int:
        """Delete items by id; ids not in the collection are ignored. Returns how many were deleted."""
        ids = check_ids(ids, None)
        with self._lock:
            self._check_open()
            iids = self.store.delete(ids)
            self._names.remove(iids)
            self.vindex.remove(iids)
            self._bm25_remove(iids)
            self._unsaved += len(iids)
            self._after_change()
        return len(iids)

    def update(self, ids, texts=None, vectors=None, metadata=None) -> None:
        """Replace texts/vectors and/or metadata of existing items (all ids must exist).

        Metadata alone is updated in place; a new text or vector re-inserts the item under the same id.
        """
        ids = check_ids(ids, None)
        with self._lock:
            self._check_open()
            missing = sorted(set(ids) - set(self.store.existing(ids)))
            if missing:
                raise NotFound(f"ids not in the collection: {missing[:10]}")
            if texts is None and vectors is None:
                if metadata is None:
                    raise BadInput("update needs texts, vectors or metadata")
                self.store.set_meta(ids, check_metadata(metadata, len(ids)))
                return
            n = len(ids)
            new_texts = check_texts(texts, n)
            vectors = self._vectors_for(new_texts, vectors)
            old = {row[0]: row for row in self.store.rows(self.store.iids_of(ids)).values()}
            if new_texts is None:
                new_texts = [old[i][1] for i in ids]
            metas = check_metadata(metadata if metadata is not None else [old[i][2] for i in ids], n)
            with self.store.transaction():  # delete + insert commit together
                old_iids = self.store.delete(ids)
                new_iids = self.store.add(ids, new_texts, metas, vectors)
            self._names.remove(old_iids)
            self._names.add(new_iids, ids)
            self.vindex.remove(old_iids)
            self.vindex.add(new_iids, vectors)
            self._bm25_remove(old_iids)
            self._bm25_add(new_iids, new_texts)
            self._unsaved += 2 * n
            self._after_change()

    def reembed(self, encoder, batch: int = 256) -> int:
        """Embed every stored text again with `encoder` and record it as the collection's encoder (its config
        and fingerprint in collection.json); ids and metadata stay. The new vectors must have the collection's
        width. Returns how many items were re-embedded. Interrupted, it leaves old and new vectors mixed and the
        old encoder recorded: run it again."""
        new = Embedder(encoder, None)
        if new.dim() != self.dim:
            raise Conflict(f"the new encoder makes {new.dim()}-dimensional vectors and collection {self.path} holds "
                           f"{self.dim}: create a new collection for it and index the texts there")
        with self._lock:
            self._check_open()
            ids = self.store.ids_page(0, len(self) + 1)
            textless = [item.id for start in range(0, len(ids), batch) for item in self.get(ids[start:start + batch])
                        if item is not None and item.text is None]
            if textless:
                raise Conflict(f"{len(textless)} items have vectors but no text to re-embed (e.g. {textless[:3]})")
            self.embedder = new
            for start in range(0, len(ids), batch):
                page = [item for item in self.get(ids[start:start + batch]) if item is not None]
                self.update([it.id for it in page], vectors=new.embed([it.text for it in page]))
            self.config = {**self.config, "encoder": new.config(), "encoder_fingerprint": new.fingerprint()}
            _write_json_atomically(self.path / CONFIG, self.config)
            self.compact()  # every item was re-inserted: drop what graph indexes only masked, save the index
        return len(ids)

    def compact(self) -> None:
        """Rebuild the index from the stored vectors (drops masked deletes, retrains) and save it."""
        with self._lock:
            self._check_open()
            self._rebuild(self._target_factory(len(self)), force=True)
            if self.bm25 is not None:
                self.bm25.compact()
                self._save_bm25()

    def flush(self) -> None:
        """Save the index snapshot now (items are always durable; this only shortens the next open)."""
        with self._lock:
            self._check_open()
            self._save_index()
            if self.bm25 is not None:
                self._save_bm25()

    # ---- reading -----------------------------------------------------------------------------------
    def search(self, query, k: int = 10, filter: dict | None = None, params: dict | None = None,
               include_text: bool = True, include_metadata: bool = True, mode: str = "dense",
               fusion: str = "rrf", rrf_k: float = fusions.RRF_K, weights: dict | None = None,
               window: int | None = None):
        """Nearest items to a text, a vector, or a batch of either.

        One query gives a list of Hit(id, score, text, metadata, scores); a batch gives a list of such
        lists. mode "dense": scores are cosine similarity (metric cosine), inner product (ip) or
        squared L2 distance (l2). mode "bm25": BM25 scores of the text query; only items sharing a term
        with it. mode "hybrid": both, fused by reciprocal rank (`fusion="rrf"`, `rrf_k`) or by weighted
        min-max normalized scores (`fusion="weighted"`); `weights` {"dense": w, "bm25": w}; each part
        hands its best `window` items (default max(k, 100)) to the fusion. Filters apply before the
        top k is cut in every mode.
        """
        part_weights = fusions.check_search_mode(mode, fusion, rrf_k, weights)
        if mode != "dense":
            return self._search_keywords(query, k, filter, params, include_text, include_metadata, mode,
                                         fusion, rrf_k, part_weights, window)
        prepared = self._prepare(query, k, filter, params)
        with self._lock:  # one hold from the index search to the rows: a delete in between would lose them
            single, scores, iids = self._search(*prepared)
            rows = None
            if include_text or include_metadata:
                rows = self.store.rows(np.unique(iids[iids >= 0]))
            out = [self._hits(s, i, rows, include_text, include_metadata) for s, i in zip(scores, iids)]
        return out[0] if single else out

    def search_arrays(self, query, k: int = 10, filter: dict | None = None, params: dict | None = None):
        """Like `search` but as arrays for bulk work: (scores (nq, k) float32, ids (nq, k) object array
        with None where fewer than k items qualified); no per-hit Python objects."""
        prepared = self._prepare(query, k, filter, params)
        with self._lock:
            single, scores, iids = self._search(*prepared)
            ids = self._names.lookup(iids)
        return (scores[0], ids[0]) if single else (scores, ids)

    def _prepare(self, query, k, filter, params) -> tuple:
        """What a dense search needs, worked out without the lock: queries are embedded here (the slow
        part, which must not hold up writers), the filter compiled, the parameters checked."""
        clamp_k(k, 1, self.max_k)  # the bad-k message before any query is embedded
        single, queries = self._queries(query)
        merged = self._merged_params(params)
        where = compile_filter(filter) if filter is not None else None
        return single, queries, k, merged, where

    def _search(self, single, queries, k, merged, where) -> tuple[bool, np.ndarray, np.ndarray]:
        """The dense search itself; the caller holds the lock until it has read what the ids name."""
        self._check_open()
        k = clamp_k(k, len(self), self.max_k)
        allowed = self.store.matching(*where) if where is not None else None
        scores, iids = self._dense_locked(queries, int(k), merged, allowed)
        return single, scores, iids

    def _merged_params(self, params) -> dict:
        return {**self._auto_params, **self.spec.params, **specs.check_params(params)}

    def _dense_locked(self, queries: np.ndarray, k: int, merged: dict, allowed: np.ndarray | None):
        """(scores, iids) (nq, k) of the vector index, -1/NaN padded; the caller holds the lock."""
        if self.vindex.live == 0 or (allowed is not None and len(allowed) == 0):
            return np.full((len(queries), k), np.nan, np.float32), np.full((len(queries), k), -1, np.int64)
        return self.vindex.search(queries, k, merged, allowed, self._exact)

    def _hits(self, scores, iids, rows, with_text, with_meta) -> list[Hit]:
        pairs = [(s, i) for s, i in zip(scores.tolist(), iids.tolist()) if i >= 0]
        if rows is None:
            names = self._names.names
            return [Hit(names[i], s, None, None) for s, i in pairs]
        return [Hit(rows[i][0], s, rows[i][1] if with_text else None, rows[i][2] if with_meta else None)
                for s, i in pairs]

    def _exact(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        """Exact top-k over the stored vectors (all, or the allowed internal ids)."""
        iids, vecs = self.store.vectors(allowed)
        flat = faiss.IndexFlat(self.dim, specs.METRICS[self.spec.metric])
        flat.add(vecs)
        scores, pos = flat.search(queries, max(1, min(k, len(iids))))
        found = np.where(pos >= 0, iids[np.maximum(pos, 0)], -1)
        pad = k - found.shape[1]
        if pad:
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
        return scores, found

    def get(self, ids) -> list[Item | None]:
        """Items for the given ids, in order; None where an id is not in the collection."""
        ids = check_ids(ids, None, unique=False)
        with self._lock:
            self._check_open()
            rows = self.store.rows(self.store.iids_of(ids), with_vectors=True)
        by_id = {r[0]: Item(*r) for r in rows.values()}
        return [by_id.get(i) for i in ids]

    def __len__(self) -> int:
        return self._names.count

    @property
    def metric(self) -> str:
        return self.spec.metric

    def __contains__(self, item_id) -> bool:
        return self.has([item_id])[0]

    def has(self, ids) -> list[bool]:
        """Whether each id is in the collection (a resumed ingest skips those that are)."""
        ids = check_ids(ids, None, unique=False)
        with self._lock:
            self._check_open()
            present = set(self.store.existing(ids))
        return [i in present for i in ids]

    def ids(self, offset: int = 0, limit: int = 100) -> list[str]:
        with self._lock:
            return self.store.ids_page(offset, limit)

    def stats(self) -> dict:
        with self._lock:
            return {"name": self.path.name, "count": len(self), "dim": self.dim, "metric": self.spec.metric,
                    "index": self.spec.factory, "built_index": self.vindex.factory,
                    "trained": bool(self.vindex.index.is_trained), "masked_deletes": int(len(self.vindex.masked)),
                    "params": self.spec.params, "auto_params": self._auto_params, "format_version": FORMAT_VERSION,
                    "bm25": self._bm25_stats()}

    # ---- keyword (BM25) and hybrid search --------------------------------------------------------------
    def _search_keywords(self, query, k, filter, params, include_text, include_metadata, mode, fusion,
                         rrf_k, weights, window):
        """search() in mode "bm25" or "hybrid": needs text queries. The filter is evaluated once and
        serves both retrievers; query vectors are computed before the lock is taken."""
        clamp_k(k, 1, self.max_k)
        single, texts = fusions.text_queries(query, mode)
        if self.bm25 is None:
            raise Conflict(f"collection {self.path.name} was created without a BM25 index (bm25=False); "
                           "only mode 'dense' is available")
        where = compile_filter(filter) if filter is not None else None
        vectors = merged = None
        if mode == "hybrid":
            merged = self._merged_params(params)
            _, vectors = self._queries(texts)
        with self._lock:
            self._check_open()
            k = int(clamp_k(k, len(self), self.max_k))
            window = fusions.check_window(window, k)
            allowed = self.store.matching(*where) if where is not None else None
            keyword = self.bm25.search_many(texts, window if mode == "hybrid" else k, allowed)
            if mode == "hybrid":
                d_scores, d_iids = self._dense_locked(vectors, clamp_k(window, len(self), self.max_k), merged,
                                                      allowed)
                higher = self.spec.metric != "l2"
                answers = []
                for n, (kw_scores, kw_iids) in enumerate(keyword):
                    keep = d_iids[n] >= 0
                    fused = fusions.fuse({"dense": fusions.Ranked(d_iids[n][keep], d_scores[n][keep], higher),
                                          "bm25": fusions.Ranked(kw_iids, kw_scores)}, k, fusion, weights, rrf_k)
                    answers.append((fused.iids, fused.scores.tolist(), fused.parts))
            else:
                answers = [(iids, scores.tolist(), [{"bm25": s, "bm25_rank": r}
                                                    for r, s in enumerate(scores.tolist(), start=1)])
                           for scores, iids in keyword]
            rows = None
            if include_text or include_metadata:
                found = np.concatenate([a[0] for a in answers]) if answers else np.empty(0, np.int64)
                rows = self.store.rows(np.unique(found))
            names = self._names.names
            out = []
            for iids, scores, parts in answers:
                if rows is None:
                    out.append([Hit(names[i], s, None, None, p) for i, s, p in zip(iids.tolist(), scores, parts)])
                    continue
                hits = []
                for iid, score, part in zip(iids.tolist(), scores, parts):
                    row = rows[iid]
                    hits.append(Hit(row[0], score, row[1] if include_text else None,
                                    row[2] if include_metadata else None, part))
                out.append(hits)
        return out[0] if single else out

    def _load_bm25(self) -> BM25Index | None:
        """The keyword index: the snapshot brought up to date with the store, or rebuilt from the texts."""
        self._bm25_unsaved = 0
        config = BM25Config.of(self.config.get("bm25", "standard"))  # collections made before BM25: standard
        if config is None:
            return None
        gen = self.store.state("bm25_gen")
        index, covers = BM25Index(config), -1
        if gen is not None:
            path = self.path / f"bm25-{gen}.npz"
            try:
                if file_sha256(path) != self.store.state("bm25_sha256"):
                    raise ValueError(f"checksum mismatch for {path.name}")
                index, covers = BM25Index.from_file(path, config), self.store.state("bm25_covers", -1)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("BM25 index of %s is missing or damaged (%s); rebuilding it from the stored texts",
                            self.path, exc)
                gen = None
        live = np.flatnonzero(np.not_equal(self._names.names, None))
        gone = np.setdiff1d(index.doc_iids, live, assume_unique=True)
        index.remove(gone)
        newer, texts = self.store.texts(after=covers)
        if gen is None and len(newer):
            log.info("indexing %d stored texts for BM25 in %s", len(newer), self.path)
        index.add(newer, texts)
        self.bm25 = index
        self._bm25_unsaved = len(gone) + len(newer)
        if gen is None and self._bm25_unsaved:
            self._save_bm25()
        return index

    def _save_bm25(self):
        gen = self.store.state("bm25_gen", 0) + 1
        path = self.path / f"bm25-{gen}.npz"
        sha = write_snapshot(self.bm25, path)
        self.store.set_state(bm25_gen=gen, bm25_sha256=sha, bm25_covers=self.store.state("next_iid", 0) - 1)
        for old in self.path.glob("bm25-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
        self._bm25_unsaved = 0

    def _bm25_add(self, iids, texts):
        if self.bm25 is not None and texts is not None:
            self.bm25.add(iids, texts)
            self._bm25_unsaved += len(iids)

    def _bm25_remove(self, iids):
        if self.bm25 is not None:
            self.bm25.remove(iids)
            self._bm25_unsaved += len(iids)

    def _bm25_stats(self) -> dict | None:
        if self.bm25 is None:
            return None
        return {**self.bm25.config.to_dict(), "documents": self.bm25.live, "terms": len(self.bm25.vocab)}

    # ---- clustering and reduction ----------------------------------------------------------------------
    def kmeans(self, k: int, niter: int = 20, seed: int = 1234) -> tuple[list[str], KMeansResult]:
        """faiss.Kmeans over every stored vector (spherical for cosine collections): (ids, result)."""
        with self._lock:
            self._check_open()
            iids, vecs = self.store.vectors()
            ids = self._names.lookup(iids).tolist()
        return ids, kmeans(vecs, k, niter=niter, seed=seed, spherical=self.spec.metric == "cosine")

    def pca(self, d_out: int) -> faiss.PCAMatrix:
        """A PCA reduction to d_out dimensions trained on the stored vectors; `.apply(X)` reduces."""
        with self._lock:
            self._check_open()
            _, vecs = self.store.vectors()
        return fit_pca(vecs, d_out)

    # ---- internals -----------------------------------------------------------------------------------
    def _check_open(self):
        if self.store is None:
            raise BadInput(f"collection {self.path} is closed")

    def _target_factory(self, n: int) -> str:
        if self.spec.factory != "auto":
            return self.spec.factory
        return specs.auto_factory(n, self.dim, self.spec.memory_budget)

    def _after_change(self):
        n = len(self)
        target = self._target_factory(n)
        if target != self.vindex.factory and self._should_switch(target, n):
            self._rebuild(target)
        elif self._unsaved >= max(SAVE_MIN, SAVE_FRACTION * self.vindex.ntotal):
            self._save_index()
        if self.bm25 is not None and self._bm25_unsaved >= max(SAVE_MIN, SAVE_FRACTION * len(self.bm25.doc_iids)):
            self._save_bm25()

    def _should_switch(self, target: str, n: int) -> bool:
        if n < specs.train_size(specs.build_index(target, self.dim, self.spec.metric), self.dim):
            return False  # keep searching exactly until there is enough to train on
        if self.spec.factory != "auto":
            return True
        current = specs.factory_tier(self.vindex.factory)
        if specs.factory_tier(target) != current:
            return specs.factory_tier(target) > current
        # same tier: an IVF index is retrained once the collection has grown 4x past its training size
        return n >= 4 * self.store.state("trained_on", n)

    def _rebuild(self, factory: str, force: bool = False):
        iids, vecs = self.store.vectors()
        empty = specs.build_index(factory, self.dim, self.spec.metric)
        trainable = len(iids) >= specs.train_size(empty, self.dim, minimum=force)
        if not trainable:
            if not force:
                return
            factory = "Flat"  # not enough vectors to train yet: exact search until there are
        log.info("building %s index over %d vectors in %s", factory, len(iids), self.path)
        sample = vecs
        if len(vecs) > TRAIN_MAX:
            pick = np.sort(np.random.default_rng(1234).choice(len(vecs), TRAIN_MAX, replace=False))
            sample = vecs[pick]
        vi = VectorIndex(factory, self.dim, self.spec.metric)
        if not vi.index.is_trained:
            vi.index.train(sample)
        vi.add(iids, vecs)
        self.vindex = vi
        if self.spec.factory == "auto":
            self._auto_params = calibrate(vi, iids, vecs, self.spec.metric)
            log.info("auto search parameters for %s: %s", factory, self._auto_params)
        self.store.set_state(trained_on=len(iids), auto_params=self._auto_params)
        self._save_index()

    def _save_index(self):
        gen = self.store.state("index_gen", 0) + 1
        path = self.path / f"index-{gen}.faiss"
        sha = self.vindex.save(path)
        covered = self.store.state("next_iid", 0) - 1
        with self.store.transaction():
            self.store.set_state(index_gen=gen, index_sha256=sha, index_factory=self.vindex.factory,
                                 index_covers=covered)
            self.store.clear_tombstones(self.vindex.masked)
        for old in self.path.glob("index-*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)
        self._unsaved = 0

    def _load_index(self) -> VectorIndex:
        gen = self.store.state("index_gen")
        factory = self.store.state("index_factory", "Flat")
        if gen is None:
            return self._fresh_index()
        path = self.path / f"index-{gen}.faiss"
        try:
            vi = VectorIndex.load(path, self.store.state("index_sha256"), factory, self.dim, self.spec.metric)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("index file of %s is missing or damaged (%s); rebuilding it from the stored vectors",
                        self.path, exc)
            self._rebuild(factory, force=True)
            return self.vindex
        # replay what happened after the snapshot: deletes (tombstones) and newer items
        vi.remove(self.store.tombstones())
        newer_iids, newer = self.store.vectors(after=self.store.state("index_covers", -1))
        vi.add(newer_iids, newer)
        self._unsaved = len(newer_iids)
        return vi

    def _fresh_index(self) -> VectorIndex:
        iids, vecs = self.store.vectors()
        vi = VectorIndex("Flat", self.dim, self.spec.metric)
        vi.add(iids, vecs)
        self._unsaved = len(iids)
        return vi


class _Names:
    """User id of each live internal id, as an object array indexed by internal id (vectorized lookup)."""

    def __init__(self, mapping: dict[int, str]):
        self.names = np.full(max(mapping, default=-1) + 1, None, dtype=object)
        for iid, name in mapping.items():
            self.names[iid] = name
        self.count = len(mapping)

    def add(self, iids: np.ndarray, ids: list[str]):
        if len(iids) and iids[-1] >= len(self.names):
            grown = np.full(max(int(iids[-1]) + 1, 2 * len(self.names)), None, dtype=object)
            grown[:len(self.names)] = self.names
            self.names = grown
        self.names[iids] = ids
        self.count += len(iids)

    def remove(self, iids: np.ndarray):
        self.names[iids] = None
        self.count -= len(iids)

    def lookup(self, iids: np.ndarray) -> np.ndarray:
        """User ids for internal ids; None for -1 (no hit)."""
        out = self.names[np.maximum(iids, 0)] if len(self.names) else np.full(iids.shape, None, dtype=object)
        out[iids < 0] = None
        return out


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _build_folder(path: Path, config: dict):
    """Write a new collection's config and empty store in a hidden folder, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-", dir=path.parent))
    try:
        (staging / CONFIG).write_text(json.dumps(config, indent=2))
        with open(staging / CONFIG, "rb+") as f:
            os.fsync(f.fileno())
        Store(staging / "store.sqlite", config["dim"]).close()
        fsync_dir(staging)
        try:
            os.rename(staging, path)  # replaces an empty folder; refuses one with anything in it
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise AlreadyExists(f"{path} already exists and is not an empty folder") from None
            raise
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _lock_folder(path: Path) -> int:
    fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"collection {path} is already open in another process") from None
    return fd
