"""``bertserve trim-vocab``: a model folder with its vocabulary cut to a corpus, or replaced by a vocab.txt.

    bertserve trim-vocab --model DIR --corpus zh.txt --out DIR-zh [--min-count 2] [--fallback chars|ascii|none]
    bertserve trim-vocab --model e5-dir --vocab cn_clip/clip/vocab.txt --out e5-chars [--corpus zh.txt]

With --vocab and --corpus the model first gets the new vocabulary, which is then trimmed to the corpus.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from bertserve.errors import BadInput


def run_trim_vocab(args) -> int:
    from bertserve.distill.trim_vocab import replace_vocab, trim_vocab

    trim = {"corpus": args.corpus, "min_count": args.min_count, "fallback": args.fallback}
    if args.vocab and args.corpus:
        with tempfile.TemporaryDirectory() as tmp:
            replaced = replace_vocab(args.model, args.vocab, Path(tmp) / "replaced")
            trimmed = trim_vocab(Path(tmp) / "replaced", args.out, **trim)
        report = dataclasses.replace(trimmed, source=replaced.source, vocab_before=replaced.vocab_before,
                                     params_before=replaced.params_before,
                                     disk_mb_before=replaced.disk_mb_before, replaced_vocab=replaced.replaced_vocab,
                                     exact_token_share=replaced.exact_token_share)
        (Path(args.out) / "trim_vocab.json").write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    elif args.vocab:
        report = replace_vocab(args.model, args.vocab, args.out)
    elif args.corpus:
        report = trim_vocab(args.model, args.out, **trim)
    else:
        raise BadInput("give --corpus FILE... (keep the tokens it uses) and/or --vocab VOCAB_TXT (replace the vocabulary)")
    r = report
    print(f"vocabulary {r.vocab_before:,} -> {r.vocab_after:,}; parameters {r.params_before:,} -> {r.params_after:,}; "
          f"weights {r.disk_mb_before:.1f} MB -> {r.disk_mb_after:.1f} MB")
    print(json.dumps(r.as_dict(), ensure_ascii=False))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trim-vocab", help="cut a model's vocabulary to a corpus, or replace it by a vocab.txt")
    p.add_argument("--model", required=True, help="HF or sentence-transformers model folder")
    p.add_argument("--corpus", nargs="+", metavar="FILE", help="texts, one per line; their tokens are kept")
    p.add_argument("--out", required=True, help="output folder (loads like the input)")
    p.add_argument("--min-count", type=int, default=1, help="keep tokens seen at least this often (default 1)")
    p.add_argument("--fallback", choices=("chars", "ascii", "none"), default="chars",
                   help="also keep: every single-character token (default), ASCII ones only, or none")
    p.add_argument("--vocab", metavar="VOCAB_TXT", help="WordPiece vocab.txt replacing the model's vocabulary")
    p.set_defaults(func=run_trim_vocab)
