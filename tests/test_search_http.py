"""/collections routes through fastapi's TestClient, with the real bundled MiniLM embedding texts."""
from __future__ import annotations


import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bertserve.evaluation import lee_background_sentences
from bertserve.search import Collection
from bertserve.search.routes import make_router
from bertserve.serve.errors import install_error_handlers


def lee_sentences(n: int) -> list[str]:
    """Real English news sentences from gensim's Lee background corpus (read by path)."""
    return lee_background_sentences(min_words=5, unique=True)[:n]


@pytest.fixture(scope="module")
def sentences():
    return lee_sentences(120)


@pytest.fixture()
def client(tmp_path, default_encoder):
    app = FastAPI()
    install_error_handlers(app)  # the server's own error mapping, as `bertserve serve` mounts the router
    router = make_router(tmp_path / "data", default_encoder.encode)
    app.include_router(router)
    with TestClient(app) as c:
        yield c
    router.registry.close()


def assert_error(resp, status, kind=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == status  # the same error shape as the rest of the HTTP API
    if kind:
        assert err["type"] == kind
    return err["message"]


@pytest.mark.timeout(180)
def test_collection_lifecycle_over_http(client, default_encoder, sentences):
    r = client.post("/collections", json={"name": "news", "index": "Flat", "metric": "cosine"})
    assert r.status_code == 201, r.text
    assert r.json()["dim"] == default_encoder.dim
    ids = [f"s{i}" for i in range(len(sentences))]
    meta = [{"half": "a" if i < 60 else "b", "i": i} for i in range(len(sentences))]
    r = client.post("/collections/news/add", json={"ids": ids, "texts": sentences, "metadata": meta})
    assert r.json() == {"ids": ids, "count": len(ids)}
    # a text query ranks like the encoder + exact cosine done by hand
    query = "bushfires threaten homes in New South Wales"
    X = default_encoder.encode(sentences)
    q = default_encoder.encode([query])[0]
    sims = X @ q / np.linalg.norm(X, axis=1) / np.linalg.norm(q)
    order = np.argsort(-sims)[:5]
    hits = client.post("/collections/news/search", json={"query": query, "k": 5}).json()["hits"]
    assert [h["id"] for h in hits] == [ids[i] for i in order]
    assert np.allclose([h["score"] for h in hits], sims[order], atol=1e-4)
    assert hits[0]["text"] == sentences[order[0]]
    # filtered: only the second half, still 5 hits
    hits = client.post("/collections/news/search", json={"query": query, "k": 5, "filter": {"half": "b"}}).json()["hits"]
    assert len(hits) == 5 and all(h["metadata"]["half"] == "b" for h in hits)
    # batch of texts and a raw vector
    res = client.post("/collections/news/search", json={"query": [query, sentences[7]], "k": 3}).json()["results"]
    assert len(res) == 2 and res[1][0]["id"] == "s7"
    hits = client.post("/collections/news/search", json={"vector": X[3].tolist(), "k": 1}).json()["hits"]
    assert hits[0]["id"] == "s3"
    # get / update / delete / stats / list
    got = client.post("/collections/news/get", json={"ids": ["s1", "nope"], "include_vectors": True}).json()
    assert got["missing"] == ["nope"] and got["items"][0]["text"] == sentences[1]
    assert np.allclose(got["items"][0]["vector"], X[1] / np.linalg.norm(X[1]), atol=1e-5)
    r = client.post("/collections/news/update", json={"ids": ["s1"], "metadata": [{"half": "z"}]})
    assert r.status_code == 200
    assert client.post("/collections/news/delete", json={"ids": ["s0", "s2"]}).json() == {"deleted": 2}
    assert client.get("/collections/news").json()["count"] == len(ids) - 2
    names = [c["name"] for c in client.get("/collections").json()["collections"]]
    assert names == ["news"]
    assert client.delete("/collections/news").json() == {"deleted": "news"}
    assert_error(client.get("/collections/news"), 404, "not_found")


@pytest.mark.timeout(120)
def test_http_errors_are_json_4xx(client, tmp_path):
    assert client.post("/collections", json={"name": "v", "dim": 4, "index": "Flat"}).status_code == 201
    good = np.eye(4).tolist()
    assert client.post("/collections/v/add", json={"ids": list("abcd"), "vectors": good}).status_code == 200
    cases = [
        (client.post("/collections/missing/search", json={"query": "x"}), 404),
        (client.post("/collections/missing/add", json={"texts": ["x"]}), 404),
        (client.post("/collections", json={"name": "v", "dim": 4}), 409),
        (client.post("/collections", json={"name": "bad", "dim": 4, "index": "IVF8,Nope"}), 400),
        (client.post("/collections", json={"name": "bad", "dim": 4, "metric": "manhattan"}), 400),
        (client.post("/collections/v/add", json={"ids": ["e"], "vectors": [[1, 2, 3]]}), 400),
        (client.post("/collections/v/add", content=b'{"ids": ["e"], "vectors": [[1, NaN, 0, 0]]}',
                     headers={"content-type": "application/json"}), 400),
        (client.post("/collections/v/add", json={"ids": ["e", "e"], "vectors": good[:2]}), 400),
        (client.post("/collections/v/add", json={"ids": ["a"], "vectors": good[:1]}), 400),
        (client.post("/collections/v/search", json={"vector": [1, 0, 0, 0], "k": 0}), 400),
        (client.post("/collections/v/search", json={"vector": [1, 0, 0, 0], "filter": {"x": {"$regex": "a"}}}), 400),
        (client.post("/collections/v/search", json={"vector": [1, 0, 0, 0], "filter": {"$or": "x"}}), 400),
        (client.post("/collections/v/search", json={"vector": [1, 0, 0, 0], "params": {"nprobe": -1}}), 400),
        (client.post("/collections/v/search", json={}), 400),
        (client.post("/collections/v/search", json={"vector": [1, 0, 0, 0], "bogus": 1}), 400),
        (client.post("/collections/v/search", content=b"not json", headers={"content-type": "application/json"}), 400),
        (client.post("/collections/v/update", json={"ids": ["zz"], "metadata": [{}]}), 404),
    ]
    for resp, status in cases:
        assert_error(resp, status)
    # names that try to leave the data folder
    for name in ["..", ".hidden", "a..b", "../escape", "a/b", "x" * 200, "", "a\\b"]:
        assert_error(client.post("/collections", json={"name": name, "dim": 4}), 400, "invalid_request_error")
    for name in ["..", "%2e%2e", "..%2fetc", ".x"]:
        resp = client.post(f"/collections/{name}/search", json={"query": "x"})
        assert resp.status_code in (400, 404), (name, resp.status_code)
        assert not resp.status_code == 404 or "error" in resp.json() or resp.json() == {"detail": "Not Found"}
    assert not (tmp_path / "escape").exists() and sorted(p.name for p in (tmp_path / "data").iterdir()) == ["v"]
    # and the collection is intact after all of that
    assert client.get("/collections/v").json()["count"] == 4


def test_collection_reopens_with_its_saved_encoder(tmp_path, default_encoder, sentences):
    """A text collection created with an Encoder can be searched by text after reopening without one."""
    path = tmp_path / "c"
    with Collection.create(path, encoder=default_encoder, index="Flat") as col:
        col.add(texts=sentences[:40], ids=[str(i) for i in range(40)])
        before = [h.id for h in col.search(sentences[5], k=3)]
    with Collection.open(path) as col:
        assert [h.id for h in col.search(sentences[5], k=3)] == before
        assert before[0] == "5"


def test_hostile_search_values_get_a_4xx_or_the_right_answer(client):
    """Values that passed validation and then broke in SQLite or Faiss (each was a 500 before): integers
    beyond 64 bits in filters, filters of thousands of conditions, control characters in field names,
    search parameters beyond a C int, and vectors whose float32 norm overflows or underflows."""
    dim = 8
    assert client.post("/collections", json={"name": "h", "dim": dim, "index": "Flat"}).status_code == 201
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, dim)).tolist()
    meta = [{"i": i, "big": 10**30 if i == 7 else 0} for i in range(40)]
    ids = [f"v{i}" for i in range(40)]
    assert client.post("/collections/h/add", json={"ids": ids, "vectors": vectors, "metadata": meta}).status_code == 200
    probe = vectors[0]

    def search(**body):
        return client.post("/collections/h/search", json={"vector": probe, "k": 40, **body})

    def ids_of(resp):
        assert resp.status_code == 200, resp.text
        return [h["id"] for h in resp.json()["hits"]]

    everything = ids_of(search())
    assert sorted(everything) == sorted(ids)
    # integers SQLite cannot bind compare as the reals SQLite stored them as
    assert ids_of(search(filter={"big": 10**30})) == ["v7"]
    assert ids_of(search(filter={"big": {"$gt": 10**29}})) == ["v7"]
    assert ids_of(search(filter={"i": 2**63})) == []
    assert ids_of(search(filter={"i": {"$in": [-(2**63) - 1, 3]}})) == ["v3"]
    assert_error(search(filter={"i": 10**400}), 400)
    # thousands of conditions: the same answer as no filter (they cover every item), or refused
    assert ids_of(search(filter={"i": {"$in": list(range(3000))}})) == everything
    assert ids_of(search(filter={"$or": [{"i": j} for j in range(1500)]})) == everything
    assert "conditions" in assert_error(search(filter={"i": {"$in": list(range(5000))}}), 400)
    assert_error(search(filter={"i\x00": 1}), 400)
    for params in ({"nprobe": 10**30}, {"efSearch": 2**31}, {"k_factor": 1e308}):
        assert "at most" in assert_error(search(params=params), 400)
    # a vector of 1e38s (norm inf in float32) or of 1e-45s (norm 0) points where a vector of ones does
    ones = ids_of(client.post("/collections/h/search", json={"vector": [1.0] * dim, "k": 40}))
    for tiny_or_huge in (1e38, 1e-45):
        got = ids_of(client.post("/collections/h/search", json={"vector": [tiny_or_huge] * dim, "k": 40}))
        assert got == ones
