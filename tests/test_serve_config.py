"""ServerConfig from files and flags: precedence, nested encoder options, clear errors."""
from __future__ import annotations

import json

import pytest

from bertserve.cli import build_parser
from bertserve.serve.cli import config_from_args
from bertserve.serve.config import ServerConfig


def parse(*argv):
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_bind_loopback():
    cfg = parse()
    assert cfg == ServerConfig()
    assert (cfg.host, cfg.http_port, cfg.port, cfg.port_out) == ("127.0.0.1", 8000, 5555, 5556)
    assert cfg.encoder.max_seq_len == "auto" and cfg.encoder.pooling is None


def test_toml_file_then_flags_on_top(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('[serve]\nhttp-port = 9000\nnum_worker = 2\ncors = ["http://a.example"]\n'
                    'pooling = "cls_token"\n[serve.encoder]\nlayers = [-1, -2]\nmax_seq_len = 64\n')
    cfg = parse("--config", str(path), "--port", "6000", "--max-seq-len", "128")
    assert cfg.http_port == 9000 and cfg.num_worker == 2 and cfg.cors == ("http://a.example",)
    assert cfg.port == 6000  # flag
    assert cfg.encoder.pooling == "cls_token" and cfg.encoder.layers == (-1, -2)
    assert cfg.encoder.max_seq_len == 128  # the flag beats the file


def test_json_file_and_switches(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"zmq": False, "api_key": "k", "max_queue_texts": 100, "max_request_texts": 50}))
    cfg = parse("--config", str(path), "--show-tokens-to-client")
    assert cfg.zmq is False and cfg.http is True and cfg.show_tokens_to_client is True
    assert cfg.public_dict()["api_key"] == "***"


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("BERTSERVE_API_KEY", "from-env")
    assert parse().api_key == "from-env"
    assert parse("--api-key", "flag").api_key == "flag"


@pytest.mark.parametrize("content, suffix, match", [
    ("nonsense = 1\n", ".toml", "unknown setting.*nonsense"),
    ("[serve\n", ".toml", "not valid TOML"),
    ("{", ".json", "not valid JSON"),
    ("[1, 2]", ".json", "table/object"),
    ('{"port": 7000, "port_out": 7000}', ".json", "must differ"),
    ('{"http_port": 70000}', ".json", "out of range"),
    ('{"num_worker": 0}', ".json", "num_worker out of range"),
    ('{"max_request_texts": 10, "max_queue_texts": 5}', ".json", "cannot exceed"),
    ('{"zmq": false, "http": false}', ".json", "switched off"),
    ('{"encoder": {"colour": "red"}}', ".json", "unknown .*colour"),
])
def test_bad_config_files_are_named(tmp_path, content, suffix, match):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        ServerConfig.from_file(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="cannot read .*nope.toml"):
        parse("--config", str(tmp_path / "nope.toml"))
