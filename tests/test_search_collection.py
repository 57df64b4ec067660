"""Collection against raw Faiss, brute force and its own files: exactness, filters, deletes, persistence."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from bertserve.search import Collection, FilterError
from bertserve.search import spec as specs


def seed_data(nb=20000, nq=200, d=64):
    """The seed's Faiss demo data, nb scaled down from 100,000."""
    np.random.seed(1234)
    xb = np.random.random((nb, d)).astype("float32")
    xb[:, 0] += np.arange(nb) / 1000.0
    xq = np.random.random((nq, d)).astype("float32")
    xq[:, 0] += np.arange(nq) / 1000.0
    return xb, xq


def as_arrays(hits):
    ids = np.array([[int(h.id) for h in row] for row in hits])
    scores = np.array([[h.score for h in row] for row in hits], dtype=np.float32)
    return scores, ids


@pytest.fixture(scope="module")
def seed():
    return seed_data()


def test_seed_demos_match_raw_faiss(tmp_path, seed):
    xb, xq = seed
    d, nlist = xb.shape[1], 100
    ids = [str(i) for i in range(len(xb))]
    # IVF100,Flat as the seed builds it by hand
    quantizer = faiss.IndexFlatL2(d)
    raw = faiss.IndexIVFFlat(quantizer, d, nlist)
    raw.train(xb)
    raw.add(xb)
    col = Collection.create(tmp_path / "ivfflat", dim=d, index="IVF100,Flat", metric="l2")
    col.add(vectors=xb, ids=ids)
    for nprobe in (1, 10):
        raw.nprobe = nprobe
        D, I = raw.search(xq, 4)
        scores, found = as_arrays(col.search(xq, k=4, params={"nprobe": nprobe}, include_text=False,
                                             include_metadata=False))
        assert np.array_equal(found, I) and np.array_equal(scores, D)
    col.close()
    # IVF100,PQ8 (m=8 sub-quantizers of 8 bits) at nprobe 10
    quantizer2 = faiss.IndexFlatL2(d)
    raw = faiss.IndexIVFPQ(quantizer2, d, nlist, 8, 8)
    raw.train(xb)
    raw.add(xb)
    raw.nprobe = 10
    D, I = raw.search(xq, 4)
    col = Collection.create(tmp_path / "ivfpq", dim=d, index="IVF100,PQ8", metric="l2", params={"nprobe": 10})
    col.add(vectors=xb, ids=ids)
    scores, found = as_arrays(col.search(xq, k=4))
    assert np.array_equal(found, I) and np.array_equal(scores, D)
    scores, names = col.search_arrays(xq, k=4)
    assert np.array_equal(names.astype(int), I) and np.array_equal(scores, D)
    # and it survives a reopen unchanged
    col.close()
    with Collection.open(tmp_path / "ivfpq") as col:
        assert np.array_equal(as_arrays(col.search(xq, k=4))[1], I)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "SQ8", "PQ8", "LSH", "PCA32,Flat", "IVF64,SQ8",
                                     "IVF64,PQ8,RFlat", "PCA32,IVF16,PQ8x4"])
def test_factory_strings_match_raw_faiss(tmp_path, seed, factory):
    xb, xq = seed[0][:6000], seed[1][:50]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # HNSW builds the same graph only when inserts are sequential
    try:
        raw = faiss.index_factory(xb.shape[1], factory)
        for part in specs._parts(raw):
            if hasattr(part, "do_polysemous_training"):
                part.do_polysemous_training = False
        raw.train(xb)
        raw.add(xb)
        D, I = raw.search(xq, 10)
        with Collection.create(tmp_path / "c", dim=xb.shape[1], index=factory, metric="l2") as col:
            col.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
            if col.stats()["built_index"] != factory:
                col.compact()  # below Faiss's 39 points per centroid: an explicit rebuild trains anyway
            scores, found = as_arrays(col.search(xq, k=10, include_text=False, include_metadata=False))
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(found, I)
    assert np.allclose(scores, D, rtol=1e-6, atol=1e-6)


# ---- filters -------------------------------------------------------------------------------------------
LANGS = ["en", "zh", "de", "fr"]


def random_meta(rng, n):
    out = []
    for _ in range(n):
        m = {"lang": LANGS[rng.integers(4)], "year": int(rng.integers(2000, 2025)), "score": float(rng.random())}
        if rng.random() < 0.3:
            m["draft"] = bool(rng.random() < 0.5)
        if rng.random() < 0.2:
            del m["year"]
        if rng.random() < 0.1:
            m["lang"] = None
        m["nested"] = {"level": int(rng.integers(3))}
        out.append(m)
    return out


def reference_match(meta, query) -> bool:
    """Independent Python reading of the filter semantics documented in filters.py."""
    def kind(v):
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, (int, float)):
            return "num"
        return "str" if isinstance(v, str) else "null"

    def get(m, field):
        for seg in field.split("."):
            if not isinstance(m, dict) or seg not in m:
                return ("missing", None)
            m = m[seg]
        return ("ok", m)

    def eq(found, v):
        state, x = found
        if v is None:
            return state == "missing" or x is None
        return state == "ok" and x is not None and kind(x) == kind(v) and x == v

    def cond(found, c):
        if not (isinstance(c, dict) and any(k.startswith("$") for k in c)):
            return eq(found, c)
        ok = True
        for op, v in c.items():
            state, x = found
            if op == "$eq":
                ok &= eq(found, v)
            elif op == "$ne":
                ok &= not eq(found, v)
            elif op == "$in":
                ok &= any(eq(found, y) for y in v)
            elif op == "$nin":
                ok &= not any(eq(found, y) for y in v)
            elif op == "$exists":
                ok &= (state == "ok") == v
            else:
                cmp = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
                       "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}[op]
                ok &= state == "ok" and x is not None and kind(x) == kind(v) and cmp(x, v)
        return ok

    def doc(m, q):
        for key, val in q.items():
            if key == "$and" and not all(doc(m, s) for s in val):
                return False
            if key == "$or" and not any(doc(m, s) for s in val):
                return False
            if key == "$nor" and any(doc(m, s) for s in val):
                return False
            if not key.startswith("$") and not cond(get(m, key), val):
                return False
        return True

    return doc(meta, query)


FILTERS = [
    {"lang": "zh"},
    {"lang": "zh", "year": {"$gte": 2018}},
    {"year": {"$gt": 2010, "$lt": 2015}},
    {"lang": {"$in": ["en", "de"]}, "score": {"$lte": 0.5}},
    {"lang": {"$nin": ["en", "de"]}},
    {"lang": {"$ne": "en"}},
    {"lang": None},
    {"draft": True},
    {"draft": {"$exists": False}},
    {"year": {"$exists": True, "$ne": 2001}},
    {"$or": [{"lang": "fr"}, {"year": {"$lt": 2003}}]},
    {"$nor": [{"lang": "fr"}, {"draft": False}]},
    {"$and": [{"score": {"$gt": 0.25}}, {"$or": [{"lang": "en"}, {"nested.level": 2}]}]},
    {"year": 2020.0},
    {"lang": {"$gt": "en"}},
    {"year": {"$in": []}},
]


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "HNSW16", "PQ8x4"])
def test_filters_agree_with_brute_force(tmp_path, factory):
    rng = np.random.default_rng(7)
    n, d, k = 3000, 32, 10
    # clustered (real-looking) vectors rather than pure noise
    centers = rng.standard_normal((30, d)).astype("float32")
    xb = (centers[rng.integers(30, size=n)] + 0.3 * rng.standard_normal((n, d))).astype("float32")
    metas = random_meta(rng, n)
    queries = xb[rng.integers(n, size=5)] + 0.05
    with Collection.create(tmp_path / "c", dim=d, index=factory, metric="l2", params={"nprobe": 1}) as col:
        col.add(vectors=xb, ids=[f"i{i}" for i in range(n)], metadata=metas)
        assert col.stats()["built_index"] == factory
        for q in FILTERS:
            match = np.array([reference_match(m, q) for m in metas])
            # the full matching set, through a search asking for everything
            everything = col.search(queries[0], k=n, filter=q)
            assert sorted(h.id for h in everything) == sorted(f"i{i}" for i in np.flatnonzero(match)), q
            hits = col.search(queries, k=k, filter=q)
            for qi, row in enumerate(hits):
                assert len(row) == min(k, match.sum()), (q, factory)  # k hits whenever k items match
                assert all(reference_match(h.metadata, q) for h in row)
                if factory == "Flat":
                    dist = ((xb[match] - queries[qi]) ** 2).sum(1)
                    best = np.sort(dist)[:k]
                    assert np.allclose([h.score for h in row], best, rtol=1e-4)


@pytest.mark.parametrize("bad", [
    [], "lang", {"lang": {"$regex": "z.*"}}, {"$where": "1"}, {"$or": {"lang": "en"}}, {"$or": []},
    {"lang": {"$in": "en"}}, {"year": {"$gt": None}}, {"year": {"$gt": True}}, {"lang": ["en"]},
    {"lang": {"$exists": "yes"}}, {'a"); DROP TABLE items; --': 1}, {"": 1}, {"score": {"$lt": float("nan")}},
])
def test_malformed_filters_are_rejected(tmp_path, bad):
    with Collection.create(tmp_path / "c", dim=4, index="Flat") as col:
        col.add(vectors=np.eye(4, dtype="float32"), ids=list("abcd"), metadata=[{"lang": "en"}] * 4)
        with pytest.raises(FilterError):
            col.search(np.ones(4, dtype="float32"), k=2, filter=bad)
        assert len(col) == 4


# ---- delete, update, compact ---------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16", "PQ8x4", "IVF16,PQ4x4,RFlat", "LSH"])
def test_delete_and_update(tmp_path, factory):
    rng = np.random.default_rng(3)
    n, d = 2500, 32
    xb = rng.standard_normal((n, d)).astype("float32")
    ids = [f"v{i}" for i in range(n)]
    path = tmp_path / "c"
    col = Collection.create(path, dim=d, index=factory, metric="l2", params={"nprobe": 16, "efSearch": 64})
    col.add(vectors=xb, ids=ids, metadata=[{"i": i} for i in range(n)])
    assert col.stats()["built_index"] == factory  # enough vectors to train: not the exact stand-in
    gone = ids[:500:2]
    assert col.delete(gone + ["never-there"]) == len(gone)
    assert len(col) == n - len(gone)
    assert col.get(gone[:3]) == [None, None, None]
    hits = col.search(xb[:500:2], k=5)
    assert not {h.id for row in hits for h in row} & set(gone)
    assert all(len(row) == 5 for row in hits)
    # update: new vector for v1 (now far from its old place), metadata only for v3
    new = (xb[1] + 10).astype("float32")
    col.update(["v1"], vectors=new[None, :])
    col.update(["v3"], metadata=[{"i": 3, "tag": "changed"}])
    assert col.get(["v3"])[0].metadata == {"i": 3, "tag": "changed"}
    assert np.allclose(col.get(["v1"])[0].vector, new)
    assert col.search(new, k=1)[0].id == "v1"
    assert "v1" not in [h.id for h in col.search(xb[1], k=5)]
    with pytest.raises(KeyError):
        col.update(["nope"], metadata=[{}])
    scores, names = col.search_arrays(xb[:500:2], k=5)
    assert names.shape == (250, 5) and not set(names.ravel()) & set(gone)
    masked = col.stats()["masked_deletes"]
    assert (masked > 0) == (factory in ("HNSW16", "IVF16,PQ4x4,RFlat"))
    col.compact()
    assert col.stats()["masked_deletes"] == 0
    assert not {h.id for row in col.search(xb[:500:2], k=5) for h in row} & set(gone)
    col.close()
    with Collection.open(path) as col:
        assert len(col) == n - len(gone) and "v0" not in col and "v1" in col
        assert col.search(new, k=1)[0].id == "v1"


def test_deletes_survive_reopen_without_clean_close(tmp_path):
    xb = np.random.default_rng(0).standard_normal((300, 8)).astype("float32")
    col = Collection.create(tmp_path / "c", dim=8, index="HNSW8", metric="l2")
    col.add(vectors=xb, ids=[str(i) for i in range(300)])
    col.flush()  # snapshot holds all 300
    col.delete([str(i) for i in range(100)])
    col.add(vectors=xb[:5] + 100, ids=["n0", "n1", "n2", "n3", "n4"])
    # simulate a crash: drop the objects without close() (no snapshot written)
    col.store.db.close()
    os.close(col._lockfile)
    col.store = None  # what the dead process's object would be: nothing of it reused
    with Collection.open(tmp_path / "c") as col2:
        assert len(col2) == 205
        found = {h.id for row in col2.search(xb[:100], k=3) for h in row}
        assert not found & {str(i) for i in range(100)}
        assert col2.search(xb[2] + 100, k=1)[0].id == "n2"


# ---- persistence and damaged files ---------------------------------------------------------------------
def test_missing_or_corrupt_index_file_is_rebuilt(tmp_path, caplog):
    xb, xq = seed_data(nb=4000, nq=20, d=16)
    path = tmp_path / "c"
    with Collection.create(path, dim=16, index="IVF32,Flat", metric="l2", params={"nprobe": 4}) as col:
        col.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        expected = as_arrays(col.search(xq, k=5))
    files = list(path.glob("index-*.faiss"))
    assert len(files) == 1
    config = json.loads((path / "collection.json").read_text())
    assert config["format_version"] == 1
    # flip bytes in the middle of the snapshot
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    files[0].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="bertserve.search"):
        with Collection.open(path) as col:
            got = as_arrays(col.search(xq, k=5))
    assert "rebuilding" in caplog.text
    assert np.array_equal(got[1], expected[1])
    caplog.clear()
    for f in path.glob("index-*.faiss"):
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="bertserve.search"):
        with Collection.open(path) as col:
            assert np.array_equal(as_arrays(col.search(xq, k=5))[1], expected[1])
    assert "rebuilding" in caplog.text


def test_format_version_and_single_writer(tmp_path):
    path = tmp_path / "c"
    col = Collection.create(path, dim=4, index="Flat")
    code = f"from bertserve.search import Collection; Collection.open({str(path)!r})"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert other.returncode != 0 and "already open in another process" in other.stderr
    with pytest.raises(FileExistsError):
        Collection.create(path, dim=4)
    col.close()
    config = json.loads((path / "collection.json").read_text())
    config["format_version"] = 99
    (path / "collection.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 99"):
        Collection.open(path)


# ---- bad input -----------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Collection.open(tmp_path / "nothing")
    with pytest.raises(ValueError, match="invalid index spec"):
        Collection.create(tmp_path / "bad", dim=8, index="IVF16,Bogus")
    with pytest.raises(ValueError, match="multiple of"):
        Collection.create(tmp_path / "bad2", dim=10, index="PQ4")
    with pytest.raises(ValueError, match="metric"):
        Collection.create(tmp_path / "bad3", dim=8, metric="hamming")
    with pytest.raises(ValueError, match="encoder or dim"):
        Collection.create(tmp_path / "bad4")
    with Collection.create(tmp_path / "c", dim=4, index="Flat") as col:
        v = np.eye(4, dtype="float32")
        with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
            col.add(vectors=np.ones((2, 5), "float32"), ids=["a", "b"])
        bad = v.copy()
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match="NaN or inf.*2"):
            col.add(vectors=bad, ids=list("abcd"))
        bad[2, 1] = np.inf
        with pytest.raises(ValueError, match="NaN or inf"):
            col.add(vectors=bad, ids=list("abcd"))
        with pytest.raises(ValueError, match="duplicate ids.*'a'"):
            col.add(vectors=v, ids=["a", "b", "a", "c"])
        with pytest.raises(ValueError, match="5 ids for 4 items"):
            col.add(vectors=v, ids=["a", "b", "c", "d", "e"])
        with pytest.raises(ValueError, match="zero vectors"):
            col.add(vectors=np.zeros((1, 4), "float32"), ids=["z"])
        with pytest.raises(ValueError, match="no encoder"):
            col.add(texts=["hello"], ids=["t"])
        with pytest.raises(ValueError, match="metadata"):
            col.add(vectors=v[:1], ids=["m"], metadata=[{"x": float("nan")}])
        assert len(col) == 0  # nothing half-added by any failed call
        col.add(vectors=v, ids=list("abcd"))
        with pytest.raises(ValueError, match="already in the collection"):
            col.add(vectors=v[:1], ids=["a"])
        for k in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="k must be"):
                col.search(v[0], k=k)
        with pytest.raises(ValueError, match="unknown search parameter"):
            col.search(v[0], k=1, params={"nprob": 3})
        with pytest.raises(ValueError, match="shape"):
            col.search(np.ones(3, "float32"), k=1)
        assert len(col) == 4


# ---- auto, clustering -----------------------------------------------------------------------------------
def test_auto_grows_from_exact_to_hnsw(tmp_path, monkeypatch):
    monkeypatch.setattr(specs, "AUTO_EXACT_BELOW", 1000)
    assert specs.auto_factory(999, 32) == "Flat"
    assert specs.auto_factory(1000, 32) == "HNSW32"
    assert specs.auto_factory(10_000_000, 64).startswith("IVF")
    # PQ codes (no full vectors to re-rank with) when memory is short; few enough lists to train well
    assert specs.auto_factory(5000, 64, memory_budget=40 * 5000) == "IVF128,PQ32"
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((1500, 32)).astype("float32")
    with Collection.create(tmp_path / "c", dim=32) as col:
        col.add(vectors=xb[:900], ids=[str(i) for i in range(900)])
        assert col.stats()["built_index"] == "Flat"
        col.add(vectors=xb[900:], ids=[str(i) for i in range(900, 1500)])
        assert col.stats()["built_index"] == "HNSW32"
        # auto tuned efSearch on its own vectors (Gaussian noise is the hardest case: it needs a lot)
        assert col.stats()["auto_params"]["efSearch"] in specs.CALIBRATE_STEPS["efSearch"]
        assert [h.id for h in col.search(xb[1200], k=1)] == ["1200"]


def test_kmeans_matches_faiss(tmp_path):
    xb, _ = seed_data(nb=3000, nq=1, d=16)
    with Collection.create(tmp_path / "c", dim=16, index="Flat", metric="l2") as col:
        col.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        ids, result = col.kmeans(8, niter=10, seed=5)
        pca = col.pca(4)
    km = faiss.Kmeans(16, 8, niter=10, seed=5)
    km.train(xb)
    assert ids == [str(i) for i in range(len(xb))]
    assert np.array_equal(result.centroids, km.centroids)
    assert np.array_equal(result.labels, km.index.search(xb, 1)[1][:, 0])
    assert pca.apply(xb[:3]).shape == (3, 4)
