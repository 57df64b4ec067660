"""MilvusCollection on Milvus Lite against the Faiss Flat Collection, on real MiniLM vectors of real text."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bertserve.search import Collection, FilterError
from serve_corpus import lee_sentences

MISSING = [m for m in ("pymilvus", "milvus_lite") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING} (pip install 'bertserve[milvus]')"),
              pytest.mark.timeout(120)]

N = 200
FILTERS = [
    {"lang": "zh"},
    {"year": {"$gte": 2010}},
    {"lang": {"$in": ["en", "de"]}, "year": {"$lt": 2015}},
    {"lang": {"$ne": "en"}},
    {"$or": [{"lang": "de"}, {"year": {"$gt": 2017}}]},
    {"$nor": [{"lang": "en"}, {"draft": True}]},
    {"tag": {"$nin": ["x"]}},            # tag only on some items: $nin matches those without it
    {"note": 'say "hi" \\ bye'},        # quotes and a backslash reach Milvus escaped, not as syntax
]


@pytest.fixture(scope="module")
def data(default_encoder):
    texts = list(dict.fromkeys(lee_sentences()))[:N]
    rng = np.random.default_rng(7)
    langs, years = ["en", "zh", "de"], list(range(2000, 2021))
    metas = []
    for i in range(len(texts)):
        m = {"lang": langs[int(rng.integers(3))], "year": int(rng.choice(years)), "draft": bool(i % 5 == 0)}
        if i % 3 == 0:
            m["tag"] = "x" if i % 2 else "y"
        if i % 7 == 0:
            m["note"] = 'say "hi" \\ bye'
        metas.append(m)
    vectors = default_encoder.encode(texts)
    ids = [f"lee-{i}" for i in range(len(texts))]
    queries = default_encoder.encode(["bushfires near Sydney", "cricket match result", "Israeli Palestinian talks"])
    return ids, texts, metas, vectors, queries


@pytest.fixture(scope="module")
def both(tmp_path_factory, data):
    from bertserve.search.milvus import MilvusCollection

    ids, texts, metas, vectors, _ = data
    folder = tmp_path_factory.mktemp("milvus")
    faiss_col = Collection.create(folder / "faiss", dim=vectors.shape[1], index="Flat", metric="cosine")
    faiss_col.add(texts=texts, ids=ids, metadata=metas, vectors=vectors)
    uri = str(folder / "lee.db")
    mil = MilvusCollection.create(uri, "lee", dim=vectors.shape[1], metric="cosine", index="FLAT")
    mil.add(texts=texts, ids=ids, metadata=metas, vectors=vectors)
    yield faiss_col, mil, uri
    mil.close()
    faiss_col.close()


def assert_same(expected, got):
    assert [h.id for h in got] == [h.id for h in expected]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-4)
    assert [(h.text, h.metadata) for h in got] == [(h.text, h.metadata) for h in expected]


def test_plain_and_batch_search_match_faiss_flat(both, data):
    faiss_col, mil, _ = both
    queries = data[4]
    assert len(mil) == len(faiss_col) == len(data[0])
    expected, got = faiss_col.search(queries, k=10), mil.search(queries, k=10)
    assert len(got) == len(queries)
    for e, g in zip(expected, got):
        assert_same(e, g)
    single = mil.search(queries[0], k=5)                       # one vector gives one list of hits
    assert_same(faiss_col.search(queries[0], k=5), single)
    assert single[0].score > 0.3 and isinstance(single[0].metadata, dict)
    bare = mil.search(queries[0], k=3, include_text=False, include_metadata=False)
    assert [(h.text, h.metadata) for h in bare] == [(None, None)] * 3


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: str(f)[:40])
def test_filtered_search_matches_faiss_flat(both, data, flt):
    faiss_col, mil, _ = both
    expected, got = faiss_col.search(data[4], k=8, filter=flt), mil.search(data[4], k=8, filter=flt)
    assert any(row for row in expected)
    for e, g in zip(expected, got):
        assert_same(e, g)


def test_injection_attempt_is_a_plain_string(both, data):
    _, mil, _ = both
    assert mil.search(data[4][0], k=5, filter={"lang": 'zh" or metadata["lang"] != "'}) == []
    assert mil.search(data[4][0], k=5, filter={"lang": {"$in": []}}) == []


def test_filter_expression_escapes_values():
    from bertserve.search.milvus import compile_milvus

    expr = compile_milvus({"a.b": 'x" or true or "', "n": {"$gte": -1.5}})
    assert expr == ('((exists metadata["a"]["b"] and metadata["a"]["b"] == "x\\" or true or \\"") and '
                    '((exists metadata["n"] and metadata["n"] >= -1.5)))')
    for bad in ({"a": {"$regex": "x"}}, {"$where": "1"}, {"a": {"$gt": None}}, {"a": float("inf")},
                {"a": "line\x00"}, ["a"]):
        with pytest.raises(FilterError):
            compile_milvus(bad)


def test_get_update_delete_and_reopen(tmp_path, data, default_encoder):
    from bertserve.search.milvus import MilvusCollection

    ids, texts, metas, vectors, queries = data
    uri = str(tmp_path / "crud.db")
    col = MilvusCollection.create(uri, "crud", encoder=default_encoder, index="HNSW",
                                  index_params={"M": 16, "efConstruction": 64}, params={"ef": 64})
    col.add(texts=texts[:40], ids=ids[:40], metadata=metas[:40])   # embedded by the encoder
    item, none = col.get([ids[3], "nope"])
    assert none is None and item.text == texts[3] and item.metadata == metas[3]
    np.testing.assert_allclose(item.vector, vectors[3], atol=1e-5)
    assert col.search(texts[5], k=1)[0].id == ids[5]
    assert col.delete([ids[5], "nope"]) == 1 and len(col) == 39
    assert ids[5] not in [h.id for h in col.search(texts[5], k=10)]
    col.update([ids[6]], metadata=[{"lang": "fr"}])                   # metadata only: vector kept
    assert [h.id for h in col.search(texts[6], k=1, filter={"lang": "fr"})] == [ids[6]]
    col.update([ids[7]], texts=["A completely new sentence about volcanoes in Iceland."])
    assert col.search("volcano eruption in Iceland", k=1)[0].id == ids[7]
    with pytest.raises(KeyError):
        col.update(["nope"], metadata=[{}])
    col.close()
    with pytest.raises(ValueError, match="closed"):
        len(col)
    with MilvusCollection.open(uri, "crud") as again:                  # encoder rebuilt from the saved config
        assert len(again) == 39 and ids[5] not in again
        assert again.get([ids[6]])[0].metadata == {"lang": "fr"}
        assert again.search("volcano eruption in Iceland", k=1)[0].id == ids[7]
        assert again.stats()["index"] == "HNSW"


def test_bad_input(tmp_path, data):
    from bertserve.search.milvus import MilvusCollection

    vectors = data[3]
    uri = str(tmp_path / "bad.db")
    col = MilvusCollection.create(uri, "bad", dim=vectors.shape[1])
    with pytest.raises(FileExistsError):
        MilvusCollection.create(uri, "bad", dim=vectors.shape[1])
    with pytest.raises(FileNotFoundError):
        MilvusCollection.open(uri, "unknown")
    for name in ("../x", "1abc", "a b", ""):
        with pytest.raises(ValueError, match="collection name"):
            MilvusCollection.open(uri, name)
    with pytest.raises(ValueError, match="shape"):
        col.add(vectors=vectors[:2, :10], ids=["a", "b"])
    nan = vectors[:2].copy()
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        col.add(vectors=nan, ids=["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        col.add(vectors=vectors[:2], ids=["a", "a"])
    col.add(vectors=vectors[:2], ids=["a", "b"])
    with pytest.raises(ValueError, match="already"):
        col.add(vectors=vectors[2:3], ids=["a"])
    with pytest.raises(ValueError, match="k must"):
        col.search(vectors[0], k=0)
    with pytest.raises(FilterError):
        col.search(vectors[0], k=1, filter={"a": {"$bogus": 1}})
    with pytest.raises(ValueError, match="encoder"):
        col.search("text without an encoder", k=1)
    with pytest.raises(ValueError, match="metric"):
        MilvusCollection.create(uri, "other", dim=4, metric="hamming")
    generated = col.add(vectors=vectors[3:5])                          # ids made up when not given
    assert len(generated) == 2 and all(col.has(generated)) and len(col) == 4
    col.close()


def test_cli_index_and_search_on_milvus(tmp_path, capsys, data):
    import json

    from bertserve.cli import main

    texts = data[1][:30]
    lines = tmp_path / "news.jsonl"
    lines.write_text("".join(json.dumps({"id": f"n{i}", "text": t, "year": 2000 + i % 3}) + "\n"
                             for i, t in enumerate(texts)))
    uri = str(tmp_path / "cli.db")
    for added in (30, 0):                                              # the second run resumes: nothing new
        assert main(["index", str(lines), "-c", "news", "--milvus", uri, "-q"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["added"] == added and out["count"] == 30 and out["engine"] == "milvus"
    assert main(["search", "news", texts[4], "-k", "3", "--milvus", uri, "--filter", '{"year": 2001}']) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["id"] == "n4" and len(hits) == 3 and all(h["metadata"]["year"] == 2001 for h in hits)
    assert main(["search", "missing", "x", "--milvus", uri]) == 2
