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
    g.add_argument("--zmq-model", help="the served model ZeroMQ (BertClient) requests go to (default: the first "
                                       "--model)")
    g.add_argument("--data-dir", help="folder of search collections, served under /collections")
    g.add_argument("--classifier", help="classifier folder (teacher or student from `bertserve distill`), "
                                        "served under POST /classify")
    g.add_argument("--ner", help="NER tagger folder (`bertserve finetune/distill --task ner`), served under POST /ner")
    g.add_argument("--generator", help="causal language model (folder, .gguf, or 'smollm2'), served under "
                                       "POST /v1/completions and /v1/chat/completions")
    g.add_argument("--generator-max-new-tokens", type=int, help="cap on a generation request's max_tokens (512)")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--num-worker", type=int, help="encoder worker threads (default 1)")
    g.add_argument("--max-batch-tokens", type=int, help="token budget of one batch (default 4096)")
    g.add_argument("--max-queue-texts", type=int, help="texts held at most before refusing (HTTP 429)")
    g.add_argument("--max-request-texts", type=int, help="texts allowed in one request")
    g.add_argument("--max-payload-bytes", type=int, help="largest HTTP body accepted")
    g.add_argument("--max-text-chars", type=int, help="longest text accepted, in characters (default 1000000)")
    g.add_argument("--max-request-tokens", type=int, help="most tokens in one request after truncation "
                                                         "(default 1000000)")
    g.add_argument("--max-search-k", type=int, help="most hits one collection search returns (default 10000)")
    g.add_argument("--allow-dimensions", action="store_true",
                   help="let OpenAI's `dimensions` truncate vectors (only for Matryoshka-trained models)")
    g.add_argument("--shutdown-timeout", type=float, help="seconds to finish requests in flight on SIGTERM")
    add_encoder_arguments(p, several_models=True)
    # Only typed flags may override the config file, so no flag carries a default of its own here.
    for action in p._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    p.set_defaults(func=run_serve)


def split_model_spec(spec: str) -> tuple[str | None, str]:
    """"zh=multilingual-e5-small" -> ("zh", "multilingual-e5-small"); a plain name or folder has no alias."""
    from pathlib import Path

    alias, sep, target = spec.partition("=")
    if sep and alias and "/" not in alias and not Path(spec).exists():
        return alias, target
    return None, spec


def config_from_args(args: argparse.Namespace):
    from bertserve.serve.config import ServerConfig

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "log_level")}
    if isinstance(given.get("model"), list):  # --model a --model zh=b: the first is the main model
        first, *more = given["model"]
        alias, target = split_model_spec(first)
        given["model"] = target
        if alias and "served_model_name" not in given:
            given["served_model_name"] = alias
        if more:
            given["models"] = tuple(more)
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
