"""One error hierarchy, mapped once per protocol: bad input is 4xx / exit 2, anything else is an internal
error (500 with a request id, ZeroMQ error reply, CLI traceback), never a 4xx. Plus the engine contract's
own promises: /classify splits pairs as /encode does and shows in /metrics under its engine label."""
from __future__ import annotations

import copy
import logging
import shutil

import httpx
import numpy as np
import pytest
from bert_serving.client import BertClient

from bertserve import cli, errors
from bertserve.serve.config import ServerConfig
from bertserve.serve.server import Server


@pytest.mark.parametrize("exc, status, type_, code", [
    (errors.BadInput("x"), 400, "invalid_request_error", 2),
    (errors.BadInputType("x"), 400, "invalid_request_error", 2),
    (errors.TooLarge("x"), 413, "request_too_large", 2),
    (errors.Unauthorized("x"), 401, "authentication_error", 2),
    (errors.NotFound("x"), 404, "not_found", 2),
    (errors.MissingFile("x"), 404, "not_found", 2),
    (errors.Conflict("x"), 409, "conflict", 2),
    (errors.AlreadyExists("x"), 409, "conflict", 2),
    (errors.Overloaded("x"), 429, "rate_limit_error", 3),
    (errors.Unavailable("x"), 503, "server_unavailable", 3),
    (RecursionError("deep"), 400, "invalid_request_error", 2),
])
def test_mapping_of_our_errors(exc, status, type_, code):
    report = errors.describe(exc)
    assert (report.status, report.type, report.exit_code, report.internal) == (status, type_, code, False)


@pytest.mark.parametrize("exc", [RuntimeError("faiss said no"), ValueError("numpy said no"), TypeError("bug"),
                                 KeyError("bug"), errors.Internal("ours")])
def test_anything_else_is_internal(exc):
    report = errors.describe(exc)
    assert report.status == 500 and report.type == "internal_error" and report.internal


def test_builtin_bases_still_catch_ours():
    assert isinstance(errors.BadInputType("x"), TypeError) and isinstance(errors.BadInput("x"), ValueError)
    assert isinstance(errors.MissingFile("x"), FileNotFoundError) and isinstance(errors.NotFound("x"), KeyError)
    assert str(errors.NotFound("no collection named 'a'")) == "no collection named 'a'"  # no KeyError quotes


@pytest.fixture()
def broken_server(default_encoder):
    """A real server whose engine fails inside a batch the way a library bug would."""
    broken = copy.copy(default_encoder)

    def run(items):
        raise RuntimeError("the backend exploded")

    broken.run = run
    server = Server(ServerConfig(http_port=0, port=0, port_out=0), encoder=broken).start()
    yield server
    server.shutdown()


def test_internal_error_is_500_with_request_id_over_http(broken_server, caplog):
    url = f"http://127.0.0.1:{broken_server.http_port}"
    with caplog.at_level(logging.ERROR):
        r = httpx.post(f"{url}/encode", json={"texts": ["hello"]}, timeout=60)
        bad = httpx.post(f"{url}/encode", json={"texts": ["fine", 3]}, timeout=60)
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert err["type"] == "internal_error" and err["request_id"] in err["message"]
    assert r.headers["x-request-id"] == err["request_id"]
    assert err["request_id"] in caplog.text and "the backend exploded" in caplog.text
    # the caller's own mistake is still a 400, even on a broken server
    assert bad.status_code == 400 and "texts[1] must be a string" in bad.json()["error"]["message"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'bertserve_errors_total{protocol="http",type="internal_error"} 1.0' in metrics
    assert 'bertserve_engine_requests_total{engine="encode",outcome="error"}' in metrics


def test_internal_error_is_500_over_zeromq(broken_server):
    with BertClient(port=broken_server.port, port_out=broken_server.port_out, timeout=60000) as bc:
        with pytest.raises(TypeError, match="500 internal_error"):
            bc.encode(["hello"])
        with pytest.raises(TypeError, match="400 invalid_request_error"):
            bc.encode(["a ||| b ||| c"])  # two separators: the caller's mistake


def test_cli_exit_codes(monkeypatch, capsys, tmp_path):
    assert cli.main(["info", "--model", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err

    def bug(args):
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr("bertserve.encode.cli.run_info", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # a traceback, not a polite user error
        cli.main(["info"])


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, chinese_vocab):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from bertserve.distill.classify import save_hf_classifier

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clf") / "model"
    folder.mkdir()
    shutil.copy(chinese_vocab, folder / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(folder))
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2))
    save_hf_classifier(model, tok, ["neg", "pos"], folder, max_seq_len=32)
    return folder


def test_classify_splits_pairs_like_encode(tiny_classifier):
    from bertserve.distill.classify import Classifier
    from bertserve.models.tokenizer import TextTokenizer

    clf = Classifier(tiny_classifier)
    tight, spaced = clf.tokenize(["我爱北京|||天安门"])[0], clf.tokenize(["我爱北京 ||| 天安门"])[0]
    assert tight.features == spaced.features
    assert 1 in tight.features["token_type_ids"]  # the second part is segment B: a pair, not one text
    reference = TextTokenizer(clf.tokenizer, 32)(["我爱北京|||天安门"])[0]  # what /encode's tokenizer makes
    assert tight.features["input_ids"] == reference.windows[0]
    # the engine contract and the in-process call agree
    np.testing.assert_allclose(clf(["我爱北京|||天安门"])[0]["probabilities"]["pos"],
                               clf.classify(["我爱北京 ||| 天安门"])[0]["probabilities"]["pos"], rtol=1e-6)


def test_classify_plugin_in_status_and_metrics(tiny_classifier, default_encoder):
    server = Server(ServerConfig(http_port=0, zmq=False, classifier=str(tiny_classifier)),
                    encoder=default_encoder).start()
    url = f"http://127.0.0.1:{server.http_port}"
    try:
        r = httpx.post(f"{url}/classify", json={"texts": ["很好", "不好|||真的"]}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert httpx.post(f"{url}/classify", json={"texts": [""]}, timeout=60).status_code == 400
        metrics = httpx.get(f"{url}/metrics").text
        assert 'bertserve_texts_total{engine="classify"} 2.0' in metrics
        status = httpx.get(f"{url}/status").json()
        assert status["engines"]["classify"]["labels"] == ["neg", "pos"]
        assert status["engines"]["classify"]["statistic"]["requests"] == 2
        assert status["engines"]["encode"]["dim"] == default_encoder.dim
    finally:
        server.shutdown()


@pytest.mark.parametrize("options, words", [
    ({"pooling": "MEAN_OF_SOMETHING"}, "unknown pooling"),
    ({"dtype": "float8"}, "dtype"),
    ({"batch_size": 0}, "batch_size"),
    ({"backend": "gpu"}, "unknown backend"),
    ({"max_seq_len": 2}, "max_seq_len"),
    ({"long_text": "wrap"}, "long_text"),
])
def test_encoder_options_are_checked_before_any_model_loads(tmp_path, options, words):
    from bertserve import Encoder, EncoderConfig

    with pytest.raises(errors.BadInput, match=words):
        EncoderConfig(**options)
    # the option is refused even where the model does not exist: nothing was loaded first
    with pytest.raises(errors.BadInput, match=words):
        Encoder(model=str(tmp_path / "no-such-model"), **options)
