"""A real server on loopback serving named models: /tokenize against the model's tokenizer, quantized output
against sentence-transformers' quantize_embeddings, prompts (input_type), per-request options against an
in-process Encoder, and the unknown-token count in /status."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from bertserve.serve.process import ServerProcess

pytestmark = pytest.mark.timeout(600)
ATOL = 2e-5
TEXTS = ["A man is playing a guitar.", "The bank raised interest rates on Tuesday.", "hello"]


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--no-zmq", "--max-request-texts", "50", startup_timeout=400)
    yield srv
    assert srv.stop() == 0, srv.log_text()[-2000:]


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=300) as h:
        yield h


def test_tokenize_equals_the_models_tokenizer(http, default_encoder):
    texts = TEXTS + ["Is it a pair ||| yes it is", "word " * 300]
    r = http.post("/tokenize", json={"input": texts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    tok = default_encoder.checkpoint.tokenizer
    for text, row in zip(texts, data):
        a, _, b = (p.strip() for p in text.partition("|||"))
        want = tok(a, b or None, truncation=True, max_length=default_encoder.max_seq_len)["input_ids"]
        assert row["ids"] == want and row["tokens"] == tok.convert_ids_to_tokens(want)
    assert [row["truncated"] for row in data] == [False, False, False, False, True]
    assert data[0]["offsets"][0] is None and data[0]["offsets"][1] == [0, 1]  # [CLS], then "a" = text[0:1]
    r = http.post("/tokenize", json={"input": "hello world", "max_seq_len": 3})
    assert r.json()["data"][0]["tokens"] == ["[CLS]", "hello", "[SEP]"] and r.json()["data"][0]["truncated"]
    r = http.post("/tokenize", json={"input": ["x"] * 51})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = http.post("/tokenize", json={"input": "x", "max_seq_len": 99999})
    assert r.status_code == 400 and "max_seq_len" in r.json()["error"]["message"]


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_output_over_http_equals_sentence_transformers(http, default_encoder, precision):
    from sentence_transformers.util.quantization import quantize_embeddings

    floats = default_encoder.encode(TEXTS)
    r = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": precision})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    ranges = np.asarray(http.get("/status").json()["quantization_ranges"], dtype=np.float32) \
        if precision.endswith("int8") else None
    want = quantize_embeddings(floats, precision, ranges=ranges)
    # a float differing in its last bit can fall on the other side of a bucket edge; allow one bucket, rarely
    assert np.abs(got - want.astype(int)).max() <= 1 and (got != want).mean() < 0.01
    r = http.post("/encode", json={"texts": TEXTS, "dtype": precision, "encoding_format": "base64"})
    body = r.json()
    arr = np.frombuffer(base64.b64decode(body["result"]), dtype=body["dtype"]).reshape(body["shape"])
    assert arr.dtype == want.dtype and np.array_equal(arr, got.astype(want.dtype))


def test_quantized_output_refuses_bad_combinations(http):
    r = http.post("/v1/embeddings", json={"input": "x", "encoding_format": "int4"})
    assert r.status_code == 400
    r = http.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8", "dimensions": 128})
    assert r.status_code == 400 and "dimensions" in r.json()["error"]["message"]


def test_status_counts_texts_the_model_does_not_cover(http):
    before = http.get("/status").json()["unknown_token_texts"]
    assert http.post("/v1/embeddings", json={"input": ["今天天气很好", "股票市场大跌", "fine English"]}).status_code == 200
    assert http.get("/status").json()["unknown_token_texts"] - before == 2


@pytest.mark.parametrize("options", [
    {"pooling": "CLS_TOKEN"},
    {"pooling": "REDUCE_MAX", "layers": [-2], "normalize": True},
    {"layers": [-1, -2]},
    {"max_seq_len": 6},
])
def test_per_request_options_equal_an_encoder_configured_so(http, options):
    from conftest import exact_encoder

    want = exact_encoder(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}).encode(TEXTS)
    r = http.post("/v1/embeddings", json={"input": TEXTS, **options})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], want, atol=ATOL)
    r = http.post("/encode", json={"texts": TEXTS, **options})
    np.testing.assert_allclose(r.json()["result"], want, atol=ATOL)


def test_concurrent_requests_with_different_poolings(server, default_encoder):
    import asyncio

    from conftest import exact_encoder

    kinds = [{}, {"pooling": "CLS_TOKEN"}, {"pooling": "NONE", "max_seq_len": 12}, {"layers": [0]}] * 3

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as h:
            return await asyncio.gather(*(h.post("/encode", json={"texts": TEXTS, **o}) for o in kinds))

    answers = asyncio.run(run())
    for options, r in zip(kinds, answers):
        assert r.status_code == 200, r.text
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        want = exact_encoder(**options).encode(TEXTS) if options else default_encoder.encode(TEXTS)
        np.testing.assert_allclose(r.json()["result"], want, atol=ATOL)


@pytest.mark.parametrize("body, match", [
    ({"pooling": "AVERAGE"}, "unknown pooling"),
    ({"layers": [7]}, "layer 7 is out of range"),
    ({"max_seq_len": 1}, "max_seq_len"),
    ({"input_type": "query"}, "no prompt 'query'"),
    ({"pooling": "NONE"}, "pools per token"),
    ({"encoding_format": "int8", "pooling": "CLS_TOKEN"}, "per-request pooling"),
])
def test_bad_request_options_are_400_naming_the_option(http, body, match):
    r = http.post("/v1/embeddings", json={"input": TEXTS, **body})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert match in r.json()["error"]["message"]


# ---- several models in one server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_models():
    srv = ServerProcess("--model", "all-MiniLM-L6-v2", "--model", "zh=multilingual-e5-small", "--zmq-model", "zh",
                        startup_timeout=600)
    yield srv
    assert srv.stop() == 0, srv.log_text()[-2000:]


ZH = ["今天天气很好", "股市今天暴跌", "这个饭馆的饭菜味道很棒"]


def test_openai_client_chooses_each_model(two_models, default_encoder, e5_encoder):
    import openai

    client = openai.OpenAI(base_url=two_models.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["all-MiniLM-L6-v2", "zh"]
    en = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    np.testing.assert_allclose([d.embedding for d in en.data], default_encoder.encode(TEXTS), atol=ATOL)
    zh = client.embeddings.create(model="zh", input=ZH, extra_body={"input_type": "query"})
    assert zh.model == "zh"
    np.testing.assert_allclose([d.embedding for d in zh.data], e5_encoder.encode(ZH, prompt="query"), atol=ATOL)
    # the registered name works beside the alias
    again = client.embeddings.create(model="multilingual-e5-small", input=ZH[:1], extra_body={"input_type": "query"})
    np.testing.assert_allclose(again.data[0].embedding, zh.data[0].embedding, atol=ATOL)
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="bge-small-zh", input=["x"])
    assert "served models: all-MiniLM-L6-v2, zh" in str(info.value)


def test_encode_tokenize_and_zeromq_reach_the_named_model(two_models, e5_encoder):
    from bert_serving.client import BertClient

    with httpx.Client(base_url=two_models.url, timeout=300) as h:
        r = h.post("/encode", json={"texts": ZH, "model": "zh", "input_type": "passage", "pooling": "CLS_TOKEN"})
        assert r.status_code == 200, r.text
        want = exact_encoder_like(e5_encoder, pooling="CLS_TOKEN").encode(ZH, prompt="passage")
        np.testing.assert_allclose(r.json()["result"], want, atol=ATOL)
        r = h.post("/tokenize", json={"input": ZH[0], "model": "zh"})
        assert r.json()["data"][0]["ids"] == e5_encoder.checkpoint.tokenizer(ZH[0])["input_ids"]
        r = h.post("/encode", json={"texts": ZH, "model": "nope"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
        status = h.get("/status").json()
        assert set(status["models"]) == {"all-MiniLM-L6-v2", "zh"}
        assert status["models"]["zh"]["memory_mib"] > 4 * status["models"]["all-MiniLM-L6-v2"]["memory_mib"]
        assert status["models"]["zh"]["statistic"]["requests"] >= 2
        assert 'engine="encode:zh"' in h.get("/metrics").text
    with BertClient(port=two_models.port, port_out=two_models.port_out, timeout=300000) as bc:
        np.testing.assert_allclose(bc.encode(ZH), e5_encoder.encode(ZH), atol=ATOL)  # --zmq-model zh


def exact_encoder_like(encoder, **options):
    """An Encoder on `encoder`'s loaded checkpoint (no second load), configured with `options`."""
    from bertserve import Encoder
    return Encoder(checkpoint=encoder.checkpoint, backend="torch", **options)
