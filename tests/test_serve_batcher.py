"""The batcher in-process with the real default model: merging, splitting, order, overtaking, bounds, drain."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from bertserve import Encoder
from bertserve.engine.batcher import Batcher, QueueFull, RequestTooLarge, ServerClosing
from bertserve.engine.contract import Engine
from bertserve.engine.metrics import Metrics
from serve_corpus import lee_sentences

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def corpus():
    return lee_sentences()[:150]


@pytest.fixture(scope="module")
def reference(default_encoder, corpus):
    return default_encoder.encode(corpus)


def make_batcher(encoder, **kw):
    metrics = Metrics()
    batcher = Batcher(encoder, metrics=metrics, **kw)
    return batcher, metrics


def test_concurrent_requests_get_their_own_rows_in_order(default_encoder, corpus, reference):
    batcher, metrics = make_batcher(default_encoder, max_batch_tokens=512, num_worker=2)
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(corpus), size=rng.integers(1, 9), replace=True) for _ in range(60)]
    results, errors = {}, []

    def client(ids):
        for k in ids:
            try:
                results[k] = batcher.submit([corpus[i] for i in picks[k]]).result(120).vectors
            except Exception as e:  # collected so a failure names the request
                errors.append((k, e))

    threads = [threading.Thread(target=client, args=(range(t, 60, 6),)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert not errors
    assert len(results) == 60
    for k, ids in enumerate(picks):
        np.testing.assert_allclose(results[k], reference[ids], atol=2e-5)
    snap = metrics.snapshot()
    assert snap["num_total_seq"] == sum(len(p) for p in picks)
    # requests really were merged: fewer batches than requests
    assert snap["num_batches"] < 60


def test_huge_request_is_split_within_the_budget(default_encoder, corpus, reference):
    seen = []

    class Recording(Engine):
        """The real encoder, recording the token count of each batch it is given."""
        kind = "encode"

        def prepare(self, inputs, **options):
            return default_encoder.prepare(inputs, **options)

        def run(self, items):
            seen.append(sum(it.num_tokens for it in items))
            return default_encoder.run(items)

        def finish(self, prepared, rows):
            return default_encoder.finish(prepared, rows)

    budget = 256
    batcher, _ = make_batcher(Recording(), max_batch_tokens=budget)
    got = batcher.encode(corpus[:60], timeout=120).vectors
    batcher.close()
    np.testing.assert_allclose(got, reference[:60], atol=2e-5)
    assert len(seen) > 5
    assert max(seen) <= budget
    assert sum(seen) == sum(it.num_tokens for it in default_encoder.tokenize(corpus[:60]))


def test_small_request_overtakes_a_huge_one(default_encoder, corpus):
    # The small request is sent once the huge one's first batch is running, and that batch is held until the
    # small request is queued beside the rest of the huge one: what is tested is only the batch choice
    # (fewest tokens left first), not which thread happens to run first.
    small_texts = ["a short one"]
    first_batch_running = threading.Event()
    holder = {}

    class HoldFirstBatch(Engine):
        kind = "encode"

        def prepare(self, inputs, **options):
            return default_encoder.prepare(inputs, **options)

        def run(self, items):
            if not first_batch_running.is_set():
                first_batch_running.set()
                b = holder["batcher"]
                with b._cond:
                    assert b._cond.wait_for(lambda: any(j.inputs is small_texts for j in b._jobs), timeout=120)
            return default_encoder.run(items)

        def finish(self, prepared, rows):
            return default_encoder.finish(prepared, rows)

    batcher, _ = make_batcher(HoldFirstBatch(), max_batch_tokens=128)
    holder["batcher"] = batcher
    order = []
    huge = batcher.submit(corpus)  # 150 texts, about 30 batches
    huge.add_done_callback(lambda f: order.append("huge"))
    assert first_batch_running.wait(120)
    small = batcher.submit(small_texts)
    small.add_done_callback(lambda f: order.append("small"))
    small.result(120)
    huge.result(300)
    batcher.close()
    assert order == ["small", "huge"]


def test_bounded_queue_refuses_at_once(default_encoder, corpus):
    batcher, _ = make_batcher(default_encoder, max_queue_texts=100, max_request_texts=100)
    first = batcher.submit(corpus[:95])
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit(corpus[:20])
    assert first.result(120).vectors.shape == (95, default_encoder.dim)
    # once drained, the same request is accepted
    assert batcher.encode(corpus[:20], timeout=60).vectors.shape == (20, default_encoder.dim)
    batcher.close()


@pytest.mark.parametrize("texts, error, match", [
    ("not a list", TypeError, "must be a list"),
    ([], ValueError, "empty"),
    (["x"] * 11, RequestTooLarge, "at most 10"),
])
def test_bad_requests_refused_at_submit(default_encoder, texts, error, match):
    batcher, _ = make_batcher(default_encoder, max_request_texts=10)
    with pytest.raises(error, match=match):
        batcher.submit(texts)
    batcher.close()


def test_bad_items_fail_only_their_request(default_encoder):
    batcher, _ = make_batcher(default_encoder)
    bad = batcher.submit(["fine", 3])
    good = batcher.submit(["fine"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string"):
        bad.result(60)
    np.testing.assert_allclose(good.result(60).vectors, default_encoder.encode(["fine"]), atol=2e-5)
    assert batcher.queued_texts == 0
    batcher.close()


def test_close_finishes_accepted_work_then_refuses(default_encoder, corpus, reference):
    batcher, _ = make_batcher(default_encoder, max_batch_tokens=512)
    futures = [batcher.submit(corpus[i:i + 10]) for i in range(0, 50, 10)]
    assert batcher.close(timeout=120)
    for k, f in enumerate(futures):
        np.testing.assert_allclose(f.result(0).vectors, reference[k * 10:(k + 1) * 10], atol=2e-5)
    with pytest.raises(ServerClosing):
        batcher.submit(["too late"])


def test_token_vectors_of_a_split_request_match(tiny_chinese_bert):
    # pooling NONE with no fixed length: pieces padded differently are put back to the request's longest
    enc = Encoder(str(tiny_chinese_bert), pooling="NONE", max_seq_len=None)
    texts = ["我爱北京", "天安门上太阳升，伟大领袖毛主席", "短", "今天天气很好我们去公园散步吧"]
    batcher, _ = make_batcher(enc, max_batch_tokens=12)
    got = batcher.submit(texts, show_tokens=True).result(60)
    batcher.close()
    want, tokens = enc.encode(texts, show_tokens=True)
    assert got.vectors.shape == want.shape
    np.testing.assert_allclose(got.vectors, want, atol=1e-5)
    assert got.tokens == tokens
