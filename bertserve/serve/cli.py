"""`bertserve serve`: flags on top of an optional --config file (JSON or TOML), on top of the defaults."""
from __future__ import annotations

import argparse
from bertserve.settings import api_key_from_env

from bertserve.encode.cli import add_encoder_arguments


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve vectors over HTTP (bert-as-service /encode, OpenAI /v1/embeddings) and ZeroMQ "
                      "(bert-as-service's protocol: BertClient works unchanged)")
    p.add_argument("--config", help="a .json or .toml file of settings (flags given here override it)")
    g = p.add_argument_group("network")
    g.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)")
    g.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0: any free port)")
    g.add_argument("--port", type=int, help="ZeroMQ port clients push requests to (default 5555)")
    g.add_argument("--port-out", type=int, help="ZeroMQ port replies are published on (default 5556)")
    g.add_argument("--no-zmq", dest="zmq", action="store_false", help="no ZeroMQ front-end")
    g.add_argument("--no-http", dest="http", action="store_false", help="no HTTP front-end")
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on HTTP (also from $BERTSERVE_API_KEY)")
    g.add_argument("--cors", help="comma-separated origins allowed by CORS, e.g. http://localhost:3000")
    g.add_argument("--show-tokens-to-client", action="store_true", help="send tokens with ZeroMQ replies")
    g.add_argument("--served-model-name", help="model name reported to OpenAI clients")
    g.add_argument("--data-dir", help="folder of search collections, served under /collections")
    g.add_argument("--classifier", help="classifier folder (teacher or student from `bertserve distill`), "
                                        "served under POST /classify")
    g.add_argument("--ner", help="NER tagger folder (`bertserve finetune/distill --task ner`), served under POST /ner")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--num-worker", type=int, help="encoder worker threads (default 1)")
    g.add_argument("--max-batch-tokens", type=int, help="token budget of one batch (default 4096)")
    g.add_argument("--max-queue-texts", type=int, help="texts held at most before refusing (HTTP 429)")
    g.add_argument("--max-request-texts", type=int, help="texts allowed in one request")
    g.add_argument("--max-payload-bytes", type=int, help="largest HTTP body accepted")
    g.add_argument("--allow-dimensions", action="store_true",
                   help="let OpenAI's `dimensions` truncate vectors (only for Matryoshka-trained models)")
    g.add_argument("--shutdown-timeout", type=float, help="seconds to finish requests in flight on SIGTERM")
    add_encoder_arguments(p)
    # Only typed flags may override the config file, so no flag carries a default of its own here.
    for action in p._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    p.set_defaults(func=run_serve)


def config_from_args(args: argparse.Namespace):
    from bertserve.serve.config import ServerConfig

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "log_level")}
    if "api_key" not in given and api_key_from_env():
        given["api_key"] = api_key_from_env()
    config_file = getattr(args, "config", None)
    return ServerConfig.from_file(config_file, **given) if config_file else ServerConfig.from_dict(given)


def run_serve(args) -> int:
    import sys

    import zmq

    from bertserve.serve.server import serve

    config = config_from_args(args)
    try:
        return serve(config)
    except (OSError, RuntimeError, zmq.ZMQError) as e:  # a port in use and the like: say so, no traceback
        print(f"bertserve serve: error: {e}", file=sys.stderr)
        return 1
