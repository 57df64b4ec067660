"""A collection remembers the encoder that built it: another model or pooling of the same width is refused
(it would return wrong neighbours without any error), re-embedding is an explicit step, and collections of
vectors alone are unaffected. Two tiny real BERTs of the same width with different weights stand for "another
model of the same width"."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bertserve.cli import main
from bertserve.errors import Conflict
from bertserve.evaluation import lee_background_sentences
from bertserve.models import default_model_path
from bertserve.search import Collection
from bertserve.search.routes import make_router
from bertserve.serve.errors import install_error_handlers
from conftest import exact_encoder, save_tiny_bert

TEXTS = lee_background_sentences(min_words=5, unique=True)[:60]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    vocab = default_model_path() / "vocab.txt"
    root = tmp_path_factory.mktemp("same_width")
    return save_tiny_bert(root / "a", vocab, seed=0), save_tiny_bert(root / "b", vocab, seed=1)


@pytest.fixture(scope="module")
def encoders(models):
    a, b = models
    return exact_encoder(a, max_seq_len=64), exact_encoder(b, max_seq_len=64)


def _build(path, encoder):
    col = Collection.create(path, encoder=encoder, index="Flat")
    col.add(texts=TEXTS, ids=[f"t{i}" for i in range(len(TEXTS))])
    col.close()


def test_collection_records_its_encoder_and_refuses_another_of_the_same_width(tmp_path, encoders):
    enc_a, enc_b = encoders
    assert enc_a.dim == enc_b.dim
    _build(tmp_path / "c", enc_a)
    saved = json.loads((tmp_path / "c" / "collection.json").read_text())["encoder_fingerprint"]
    assert saved == enc_a.fingerprint() and saved["dim"] == enc_a.dim and saved["pooling"] == enc_a.config.pooling

    with pytest.raises(Conflict) as err:  # another model, same width
        Collection.open(tmp_path / "c", encoder=enc_b)
    message = str(err.value)
    assert enc_a.fingerprint()["model_sha256"][:12] in message and enc_b.fingerprint()["model_sha256"][:12] in message
    assert "reembed" in message
    other_pooling = exact_encoder(enc_a.config.model, max_seq_len=64, pooling="REDUCE_MAX")
    with pytest.raises(Conflict, match="REDUCE_MAX"):  # the same model, another pooling
        Collection.open(tmp_path / "c", encoder=other_pooling)
    with pytest.raises(Conflict):  # a bound method of the wrong encoder (as a server may pass) is checked too
        Collection.open(tmp_path / "c", encoder=enc_b.encode)

    with Collection.open(tmp_path / "c", encoder=exact_encoder(enc_a.config.model, max_seq_len=64)) as col:
        assert col.search(TEXTS[3], k=1)[0].id == "t3"  # an equal encoder (another instance) is accepted
    with Collection.open(tmp_path / "c") as col:  # no encoder: the saved one is rebuilt
        assert col.search(TEXTS[5], k=1)[0].id == "t5"


def test_reembed_replaces_every_vector_and_the_recorded_encoder(tmp_path, encoders):
    enc_a, enc_b = encoders
    _build(tmp_path / "c", enc_a)
    with Collection.open(tmp_path / "c", encoder=enc_b, reembed=True) as col:
        got = col.search(TEXTS[:4], k=5)
        stored = np.stack([it.vector for it in col.get(["t0", "t1", "t2"])])
    want = enc_b.encode(TEXTS[:3])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, want, atol=1e-5)
    _build(tmp_path / "fresh", enc_b)  # the same texts embedded by B from the start
    with Collection.open(tmp_path / "fresh", encoder=enc_b) as fresh:
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in fresh.search(TEXTS[:4], k=5)]
    assert json.loads((tmp_path / "c" / "collection.json").read_text())["encoder_fingerprint"] == enc_b.fingerprint()
    with pytest.raises(Conflict):
        Collection.open(tmp_path / "c", encoder=enc_a)  # now A is the stranger


def test_vector_only_collections_are_unaffected(tmp_path, encoders):
    enc_a, _ = encoders
    col = Collection.create(tmp_path / "v", dim=enc_a.dim, index="Flat")
    col.add(vectors=np.eye(enc_a.dim, dtype=np.float32)[:5], ids=list("abcde"))
    col.close()
    assert json.loads((tmp_path / "v" / "collection.json").read_text())["encoder_fingerprint"] is None
    with Collection.open(tmp_path / "v", encoder=enc_a) as col:  # any encoder may embed text queries
        assert len(col.search("hello", k=2)) == 2


def test_http_refuses_a_collection_built_by_another_encoder(tmp_path, encoders):
    enc_a, enc_b = encoders
    _build(tmp_path / "data" / "news", enc_a)
    app = FastAPI()
    install_error_handlers(app)  # the server's own error mapping, as `bertserve serve` mounts the router
    router = make_router(tmp_path / "data", enc_b.encode)
    app.include_router(router)
    with TestClient(app) as client:
        r = client.post("/collections/news/search", json={"query": "fire", "k": 3})
    router.registry.close()
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"
    assert "sha256" in r.json()["error"]["message"]


def test_the_servers_batched_encoder_is_checked_as_the_encoder_it_serves(tmp_path, encoders):
    from bertserve.engine.batcher import BatchedEncoder, Batcher

    enc_a, enc_b = encoders
    _build(tmp_path / "c", enc_a)
    batchers = [Batcher(enc_a), Batcher(enc_b)]
    try:
        with Collection.open(tmp_path / "c", encoder=BatchedEncoder(batchers[0])) as col:
            assert col.search(TEXTS[2], k=1)[0].id == "t2"
        with pytest.raises(Conflict):
            Collection.open(tmp_path / "c", encoder=BatchedEncoder(batchers[1]))
    finally:
        for b in batchers:
            b.close()


def test_cli_keeps_encoder_flags_without_model_and_reembeds_on_request(tmp_path, models, capsys):
    a, b = models
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS[:30]) + "\n")
    col = str(tmp_path / "c")
    assert main(["index", str(data), "-c", col, "--model", str(a), "--max-seq-len", "64", "-q"]) == 0
    # --pooling without --model used to be dropped silently; now it reaches the collection, which refuses it
    assert main(["search", col, "fire", "--pooling", "REDUCE_MAX"]) == Conflict.exit_code
    assert "REDUCE_MAX" in capsys.readouterr().err
    assert main(["index", str(data), "-c", col, "--model", str(b), "--max-seq-len", "64", "--reembed", "-q"]) == 0
    capsys.readouterr()
    assert main(["search", col, TEXTS[7], "-k", "1"]) == 0  # the saved encoder is now B's
    assert json.loads(capsys.readouterr().out.splitlines()[0])["id"] == "7"
