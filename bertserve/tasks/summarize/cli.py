"""`bertserve summarize` and `bertserve keywords`: a text file (or stdin) in, the summary or keywords out.

With --server URL the work is done by a running `bertserve serve` (its model, its batcher); otherwise an
Encoder is built here from the usual encoder flags.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    from bertserve.encode.cli import add_encoder_arguments
    from bertserve.tasks.summarize.keywords import KeywordOptions
    from bertserve.tasks.summarize.summarize import METHODS, SummaryOptions

    s_defaults, k_defaults = SummaryOptions(), KeywordOptions()
    p = subparsers.add_parser("summarize", help="extractive summary of a text (Chinese or English)",
                              description="Pick the most central sentences of a text, in document order.")
    _common(p)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--num-sentences", "-n", type=int, help="keep this many sentences")
    budget.add_argument("--ratio", type=float, help="keep this fraction of the sentences (default 0.2)")
    p.add_argument("--max-chars", type=int, help="cap on the summary's length in characters")
    p.add_argument("--method", choices=METHODS, default=s_defaults.method)
    p.add_argument("--diversity", type=float, default=s_defaults.diversity, help="MMR redundancy penalty, 0..1")
    p.add_argument("--position", type=float, default=s_defaults.position,
                   help="weight of the prior for the opening sentences (0: none)")
    add_encoder_arguments(p)
    p.set_defaults(func=run_summarize)

    p = subparsers.add_parser("keywords", help="keywords and keyphrases of a text (Chinese or English)",
                              description="Words and phrases closest in meaning to the whole text.")
    _common(p)
    p.add_argument("--top-n", "-n", type=int, default=k_defaults.top_n)
    p.add_argument("--diversity", type=float, default=k_defaults.diversity, help="MMR diversity, 0..1")
    p.add_argument("--max-ngram", type=int, default=k_defaults.max_ngram, help="longest English phrase in words")
    add_encoder_arguments(p)
    p.set_defaults(func=run_keywords)


def _common(p: argparse.ArgumentParser):
    p.add_argument("input", nargs="?", default="-", help="text file (default: stdin)")
    p.add_argument("--server", help="URL of a running bertserve server to do the work (e.g. http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="the server's API key")
    p.add_argument("--json", action="store_true", help="print the full answer as JSON")


def _read(args) -> str:
    if args.input == "-":
        if sys.stdin.isatty():
            raise SystemExit(f"bertserve {args.command}: give a text file or pipe the text on stdin")
        return sys.stdin.read()
    with open(args.input, encoding="utf-8") as f:
        return f.read()


def _worker(args):
    """A Client of --server, or an Encoder built from the encoder flags."""
    if args.server:
        from bertserve.client import Client
        return Client(args.server, api_key=args.api_key)
    from bertserve.encode.cli import encoder_config_from_args
    from bertserve.encode.encoder import Encoder
    return Encoder(config=encoder_config_from_args(args))


def _remote(call, *args, **options):
    """A server's refusal as the error it stands for, so the command exits as it would in-process."""
    from bertserve.client import BadRequest, ServerError
    from bertserve.errors import BadInput, TooLarge, Unavailable

    try:
        return call(*args, **options)
    except BadRequest as e:
        raise (TooLarge if e.status == 413 else BadInput)(f"server: {e.message}") from e
    except ServerError as e:
        raise Unavailable(f"server: {e}") from e


def run_summarize(args) -> int:
    text = _read(args)
    options = {k: v for k, v in (("num_sentences", args.num_sentences), ("ratio", args.ratio),
                                 ("max_chars", args.max_chars)) if v is not None}
    options.update(method=args.method, diversity=args.diversity, position=args.position)
    worker = _worker(args)
    if args.server:
        answer = _remote(worker.summarize, text, **options)
    else:
        from bertserve.tasks.summarize.summarize import summarize
        answer = summarize(worker, text, **options).to_dict()
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=1))
    else:
        for s in answer["sentences"]:
            print(s["text"])
    return 0


def run_keywords(args) -> int:
    text = _read(args)
    options = dict(top_n=args.top_n, diversity=args.diversity, max_ngram=args.max_ngram)
    worker = _worker(args)
    if args.server:
        found = _remote(worker.keywords, text, **options)
    else:
        from bertserve.tasks.summarize.keywords import keywords
        found = [k.to_dict() for k in keywords(worker, text, **options)]
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=1))
    else:
        for k in found:
            print(f"{k['score']:.4f}\t{k['text']}")
    return 0
