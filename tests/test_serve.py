"""A real `bertserve serve` process on loopback, driven by the real clients: bert-serving-client's BertClient
(unmodified, 1.10.0), the openai package, bertserve's own Client, and raw HTTP/ZeroMQ for bad input.
Every vector is compared with the in-process Encoder on the same texts."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
import numpy as np
import pytest
import zmq
from bert_serving.client import BertClient, ConcurrentBertClient

from bertserve.client import AsyncClient, BadRequest, Client
from bertserve.models import default_model_path
from bertserve.serve.process import ServerProcess
from serve_corpus import lee_sentences

pytestmark = pytest.mark.timeout(240)
KEY = "test-secret"
ATOL = 2e-5  # rows batched with different neighbours differ only by float rounding


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--show-tokens-to-client", "--api-key", KEY, "--cors", "http://example.com",
                        "--max-request-texts", "100", "--max-payload-bytes", "200000", "--max-batch-tokens", "2048")
    yield srv
    assert srv.stop() == 0, srv.log_text()[-2000:]


@pytest.fixture(scope="module")
def corpus():
    return lee_sentences()[:100]


@pytest.fixture(scope="module")
def reference(default_encoder, corpus):
    return default_encoder.encode(corpus)


@pytest.fixture
def bc(server):
    client = BertClient(port=server.port, port_out=server.port_out, timeout=60000)
    yield client
    client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as h:
        yield h


def assert_alive(server):
    with Client(server.url, api_key=KEY) as c:
        assert c.encode(["still serving"]).shape == (1, 384)
    with BertClient(port=server.port, port_out=server.port_out, timeout=30000) as b:
        assert b.encode(["still serving"]).shape == (1, 384)


# ---- bert-as-service protocol, real BertClient ----------------------------------------------------------

def test_bertclient_encode_pairs_tokenized_and_tokens(bc, default_encoder, corpus, reference):
    np.testing.assert_allclose(bc.encode(corpus[:20]), reference[:20], atol=ATOL)
    pairs = ["How old are you? ||| What is your age?", "The cat sat. ||| A dog barked loudly."]
    np.testing.assert_allclose(bc.encode(pairs), default_encoder.encode(pairs), atol=ATOL)
    tokenized = [["hello", "world"], ["the", "quick", "brown", "fox"]]
    np.testing.assert_allclose(bc.encode(tokenized, is_tokenized=True),
                               default_encoder.encode(tokenized, is_tokenized=True), atol=ATOL)
    vectors, tokens = bc.encode(["First do it", "then do it right"], show_tokens=True)
    want, want_tokens = default_encoder.encode(["First do it", "then do it right"], show_tokens=True)
    np.testing.assert_allclose(vectors, want, atol=ATOL)
    assert tokens == want_tokens == [["[CLS]", "first", "do", "it", "[SEP]"],
                                     ["[CLS]", "then", "do", "it", "right", "[SEP]"]]


def test_bertclient_server_config_and_status(bc, default_encoder):
    cfg = bc.server_config
    assert cfg["server_version"] == "1.10.0"
    assert cfg["max_seq_len"] == default_encoder.max_seq_len
    assert cfg["show_tokens_to_client"] is True
    assert cfg["pooling_strategy"] == "REDUCE_MEAN" and cfg["dim"] == 384
    assert cfg["backend"] == "torch"  # the test session pins the exact backend (conftest)
    assert cfg["model_dir"] == str(default_model_path())
    assert cfg["api_key"] == "***"  # never echoed
    before = bc.server_status["num_total_seq"]
    bc.encode(["one", "two", "three"])
    status = bc.server_status
    assert status["num_total_seq"] >= before + 3
    assert status["num_active_client"] >= 1


def test_bertclient_encode_async_fetch_and_fetch_all(bc, corpus, reference):
    batches = [corpus[i:i + 7] for i in range(0, 35, 7)]
    got = {r.id: r.embedding for r in bc.encode_async(iter(batches), max_num_batch=5)}
    assert len(got) == 5
    stacked = np.concatenate([got[k] for k in sorted(got)])
    np.testing.assert_allclose(stacked, reference[:35], atol=ATOL)

    for b in batches:
        assert bc.encode(b, blocking=False) is None
    np.testing.assert_allclose(bc.fetch_all(sort=True, concat=True), reference[:35], atol=ATOL)
    for b in batches[:2]:
        bc.encode(b, blocking=False)
    fetched = list(bc.fetch())
    assert sorted(len(r.embedding) for r in fetched) == [7, 7]


def test_concurrent_bertclient(server, corpus, reference):
    cbc = ConcurrentBertClient(max_concurrency=4, port=server.port, port_out=server.port_out, timeout=60000)
    results, errors = {}, []

    def work(k):
        try:
            results[k] = cbc.encode(corpus[k * 5:(k + 1) * 5])
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cbc.server_config["server_version"] == "1.10.0"
    cbc.close()
    assert not errors
    for k in range(4):
        np.testing.assert_allclose(results[k], reference[k * 5:(k + 1) * 5], atol=ATOL)


def test_bertclient_timeout_when_nobody_answers():
    with zmq.Context() as ctx:
        socks = [ctx.socket(zmq.PULL) for _ in range(2)]
        ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in socks]
        for s in socks:
            s.close(0)
    client = BertClient(port=ports[0], port_out=ports[1], ignore_all_checks=True, timeout=300)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no response from the server"):
        client.encode(["hello"])
    assert time.monotonic() - t0 < 5
    client.close()


def test_bertclient_refusal_shows_the_servers_message(bc):
    with pytest.raises(TypeError, match="at most 100 per request"):
        bc.encode(["x"] * 101)
    assert bc.encode(["after the refusal"]).shape == (1, 384)


# ---- HTTP: OpenAI client, bert-as-service /encode, bertserve Client ------------------------------------

def test_openai_client_embeddings(server, default_encoder, corpus, reference):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    resp = client.embeddings.create(input=corpus[:10], model="anything")  # the client asks for base64
    np.testing.assert_allclose(np.array([d.embedding for d in resp.data]), reference[:10], atol=ATOL)
    assert [d.index for d in resp.data] == list(range(10))
    assert resp.model == "all-MiniLM-L6-v2"
    n_tokens = sum(it.num_tokens for it in default_encoder.tokenize(corpus[:10]))
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == n_tokens
    one = client.embeddings.create(input=corpus[3], model="m", encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, reference[3], atol=ATOL)
    full = client.embeddings.create(input=corpus[:2], model="m", dimensions=384)
    np.testing.assert_allclose(np.array([d.embedding for d in full.data]), reference[:2], atol=ATOL)
    with pytest.raises(BadRequestError, match="not trained for shortened vectors"):
        client.embeddings.create(input="x", model="m", dimensions=128)
    with pytest.raises(BadRequestError, match="token ids is not supported"):
        client.embeddings.create(input=[[101, 2023]], model="m")
    models = client.models.list()
    assert [m.id for m in models.data] == ["all-MiniLM-L6-v2"]


def test_http_encode_in_bert_as_service_format(http, default_encoder, corpus, reference):
    r = http.post("/encode", json={"id": 123, "texts": corpus[:4], "is_tokenized": False})
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == 123
    np.testing.assert_allclose(np.array(body["result"]), reference[:4], atol=ATOL)
    r = http.post("/encode", json={"id": "b", "texts": [["hello", "world"]], "is_tokenized": True,
                                   "encoding_format": "base64", "show_tokens": True})
    body = r.json()
    got = np.frombuffer(base64.b64decode(body["result"]), dtype=body["dtype"]).reshape(body["shape"])
    np.testing.assert_allclose(got, default_encoder.encode([["hello", "world"]], is_tokenized=True), atol=ATOL)
    assert body["tokens"] == [["[CLS]", "hello", "world", "[SEP]"]]


def test_python_client_chunks_progress_and_async(server, corpus, reference, capsys):
    with Client(server.url, api_key=KEY, chunk_size=7) as c:
        np.testing.assert_allclose(c.encode(corpus[:30], show_progress=True), reference[:30], atol=ATOL)
        assert "30/30" in capsys.readouterr().err
        assert c.health()
        assert c.status()["server_version"] == "1.10.0"
        with pytest.raises(BadRequest, match="texts is empty|must be a string"):
            c.encode([1, 2])

    async def run():
        async with AsyncClient(server.url, api_key=KEY, chunk_size=6, concurrency=3) as ac:
            return await ac.encode(corpus[:25])
    np.testing.assert_allclose(asyncio.run(run()), reference[:25], atol=ATOL)


def test_python_client_retries_then_fails_on_a_dead_port():
    with zmq.Context() as ctx:
        s = ctx.socket(zmq.PULL)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        s.close(0)
    with Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as c:
        with pytest.raises(ConnectionError, match="after 3 attempts"):
            c.encode(["x"])
        assert not c.health()


def test_python_client_timeout():
    # A peer that accepts the connection (the kernel's backlog does) and never answers: the read must time out
    # whatever the machine's speed, where a real server given 1 ms might or might not have answered in time.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with Client(f"http://127.0.0.1:{port}", timeout=0.2, retries=0) as c:
            with pytest.raises(TimeoutError, match="no answer"):
                c.encode(["hello"])


def test_status_health_metrics(server, http, bc):
    bc.encode(["count me"])
    http.post("/encode", json={"texts": ["and me"]})
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # no key needed
    status = http.get("/status").json()
    assert status["server_version"] == "1.10.0" and status["num_total_seq"] >= 2
    assert {"pooling", "layers", "normalize"} <= set(status["request_options"])  # what one request may change
    assert "REDUCE_MAX" in status["poolings"]
    metrics = http.get("/metrics").text
    # read with Prometheus' own parser: label order in the text is not part of the format
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert samples[("bertserve_requests_total", (("endpoint", "encode"), ("protocol", "zmq")))] >= 1
    assert samples[("bertserve_requests_total", (("endpoint", "POST /encode"), ("protocol", "http")))] >= 1
    assert samples[("bertserve_request_seconds_bucket",
                    (("endpoint", "POST /encode"), ("le", "+Inf"), ("protocol", "http")))] >= 1
    assert samples[("bertserve_batch_texts_count", (("engine", "encode"),))] >= 1
    assert samples[("bertserve_queue_texts", ())] == 0
    assert samples[("bertserve_texts_total", (("engine", "encode"),))] >= 2
    assert http.get("/openapi.json").json()["paths"].keys() >= {"/encode", "/v1/embeddings"}


def test_16_threads_x_50_requests_all_correct(server, default_encoder, corpus):
    """8 threads over HTTP and 8 over ZeroMQ, 50 requests each, 1-4 texts per request."""
    corpus = [" ".join(s.split()[:8]) for s in corpus]  # short texts: 800 requests stay quick on 2 cores
    reference = default_encoder.encode(corpus)
    rng = np.random.default_rng(1)
    plans = [[rng.choice(len(corpus), size=rng.integers(1, 5)) for _ in range(50)] for _ in range(16)]
    failures, answered = [], [0] * 16

    def run(t):
        if t < 8:
            client = Client(server.url, api_key=KEY)
            encode = client.encode
        else:
            client = BertClient(port=server.port, port_out=server.port_out, timeout=120000)
            encode = client.encode
        try:
            for ids in plans[t]:
                got = encode([corpus[i] for i in ids])
                if got.shape != (len(ids), 384) or not np.allclose(got, reference[ids], atol=ATOL):
                    failures.append((t, list(ids)))
                answered[t] += 1
        except Exception as e:
            failures.append((t, repr(e)))
        finally:
            client.close()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert not failures
    assert answered == [50] * 16


# ---- bad input: clear 4xx / error replies, and the server keeps serving ---------------------------------

@pytest.mark.parametrize("path, kwargs, status, type_, match", [
    ("/encode", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     "invalid_request_error", "not valid JSON"),
    ("/encode", {"json": {"texts": "a string"}}, 400, "invalid_request_error", "texts: Input should be a valid list"),
    ("/encode", {"json": {"texts": ["ok", 5]}}, 400, "invalid_request_error", r"texts\[1\] must be a string"),
    ("/encode", {"json": {"texts": []}}, 400, "invalid_request_error", "empty"),
    ("/encode", {"json": {"nothing": 1}}, 400, "invalid_request_error", "texts: Field required"),
    ("/encode", {"json": {"texts": ["x"] * 101}}, 413, "request_too_large", "at most 100"),
    ("/encode", {"json": {"texts": ["x" * 2500] * 99}}, 413, "request_too_large", "over the server's limit"),
    ("/encode", {"json": {"texts": [["a"]], "is_tokenized": False}}, 400, "invalid_request_error", "token lists"),
    ("/encode", {"json": {"texts": ["a b"], "is_tokenized": True}}, 400, "invalid_request_error", "holds strings"),
    ("/encode", {"json": {"texts": ["a ||| b ||| c"]}}, 400, "invalid_request_error", "more than one"),
    ("/v1/embeddings", {"json": {"input": [], "model": "m"}}, 400, "invalid_request_error", "empty"),
    ("/v1/embeddings", {"json": {"input": {"a": 1}}}, 400, "invalid_request_error", "input"),
    ("/v1/embeddings", {"json": {"input": "x", "dimensions": 999}}, 400, "invalid_request_error", "exceeds"),
    ("/v1/embeddings", {"json": {"input": "x", "encoding_format": "hex"}}, 400, "invalid_request_error",
     "encoding_format"),
    ("/nowhere", {"json": {}}, 404, "not_found", "Not Found"),
])
def test_bad_http_input_gets_a_clear_4xx(server, http, path, kwargs, status, type_, match):
    r = http.post(path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == type_
    assert re.search(match, err["message"], re.IGNORECASE), err["message"]


def test_auth_method_and_cors(server, http):
    assert httpx.post(f"{server.url}/encode", json={"texts": ["x"]}).status_code == 401
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.post(f"{server.url}/encode", json={"texts": ["x"]}, headers={"X-API-Key": KEY}).status_code == 200
    r = http.get("/encode")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    pre = httpx.options(f"{server.url}/encode", headers={"Origin": "http://example.com",
                                                         "Access-Control-Request-Method": "POST"})
    assert pre.headers.get("access-control-allow-origin") == "http://example.com"
    other = httpx.options(f"{server.url}/encode", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    assert_alive(server)


def _raw_zmq(server):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    sub = ctx.socket(zmq.SUB)
    identity = str(uuid.uuid4()).encode()
    sub.setsockopt(zmq.SUBSCRIBE, identity)
    sub.setsockopt(zmq.RCVTIMEO, 20000)
    push.connect(f"tcp://127.0.0.1:{server.port}")
    sub.connect(f"tcp://127.0.0.1:{server.port_out}")
    return ctx, push, sub, identity


def test_bad_zmq_messages_get_error_replies_or_are_dropped(server):
    ctx, push, sub, me = _raw_zmq(server)
    try:
        # no reply possible: wrong frame count, non-numeric request id
        push.send_multipart([me, b'["a"]'])
        push.send_multipart([me, b'["a"]', b"abc", b"1"])
        cases = [
            (b"{not json", b"1", "not valid JSON"),
            (b'"a string"', b"1", "must be a JSON list"),
            (b'["ok", 3]', b"2", "texts[1] must be a string"),
            (b"[]", b"0", "empty"),
            (b'["a", "b"]', b"7", "msg_len"),
            (b'[["a"], "b"]', b"2", "texts[0] must be a string"),  # not all lists: read as plain texts
            (b"\xff\xfe", b"1", "not valid JSON"),
        ]
        for k, (payload, msg_len, _) in enumerate(cases, start=1):
            push.send_multipart([me, payload, str(k).encode(), msg_len])
        replies = {}
        for _ in cases:
            frames = sub.recv_multipart()
            assert frames[0] == me
            replies[int(frames[-1])] = json.loads(frames[1])
        for k, (_, _, match) in enumerate(cases, start=1):
            assert match in replies[k]["error"]["message"], (k, replies[k])
            assert replies[k]["shape"] == [0]
        # a good request on the same sockets still works
        push.send_multipart([me, b'["fine"]', b"99", b"1"])
        frames = sub.recv_multipart()
        header = json.loads(frames[1])
        assert int(frames[-1]) == 99 and header["shape"] == [1, 384]
        assert np.frombuffer(frames[2], dtype=header["dtype"]).shape == (384,)
    finally:
        push.close(0)
        sub.close(0)
        ctx.term()
    assert_alive(server)
