"""`bertserve encode` and `bertserve info`, and the encoder flags every command that builds an Encoder shares."""
from __future__ import annotations

import argparse
import json
import sys

from bertserve.encode.backends import BACKENDS
from bertserve.encode.config import STRATEGIES, EncoderConfig

PROGRESS_THRESHOLD = 1000  # texts; below this a progress bar is noise


def _layers(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated ints, e.g. --layers=-1 or --layers=-1,-2; got {value!r}")


def _max_seq_len(value: str):
    if value.lower() in ("auto", "none"):
        return value.lower() if value.lower() == "auto" else None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"max-seq-len must be an int, 'none' or 'auto'; got {value!r}")


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("encoder")
    g.add_argument("--model", help="model folder (Hugging Face, sentence-transformers or Google TF checkpoint); "
                                   "default: the bundled all-MiniLM-L6-v2")
    g.add_argument("--pooling", type=str.upper, choices=STRATEGIES, help="pooling strategy (default: the model's)")
    g.add_argument("--layers", type=_layers, help="layer(s), e.g. --layers=-2 or --layers=-1,-2 (0: embeddings)")
    g.add_argument("--max-seq-len", type=_max_seq_len, default="auto", help="int, 'none' (longest) or 'auto'")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None, help="unit vectors")
    g.add_argument("--mask-cls-sep", action="store_true", help="leave [CLS]/[SEP] out of mean and max pooling")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--long-text", choices=("truncate", "chunk"), default="truncate")
    g.add_argument("--chunk-overlap", type=int)
    g.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    g.add_argument("--backend", choices=BACKENDS,
                   help="torch (exact reference), onnx (exact, cached export), onnx-int8, bf16 (CPUs with native "
                        "bfloat16), or auto: the fastest that passes the quality gate for this model "
                        "(default: auto, or $BERTSERVE_BACKEND)")
    g.add_argument("--num-threads", type=int)


def encoder_config_from_args(args: argparse.Namespace) -> EncoderConfig:
    return EncoderConfig(model=args.model, pooling=args.pooling, layers=args.layers, max_seq_len=args.max_seq_len,
                         normalize=args.normalize, mask_cls_sep=args.mask_cls_sep, batch_size=args.batch_size,
                         long_text=args.long_text, chunk_overlap=args.chunk_overlap, dtype=args.dtype,
                         num_threads=args.num_threads, **({} if args.backend is None else {"backend": args.backend}))


def _read_texts(args) -> list[str]:
    if args.texts:
        return list(args.texts)
    source = sys.stdin if args.input in (None, "-") else open(args.input, encoding="utf-8")
    with source:
        return [line.rstrip("\n") for line in source if line.strip()]


def run_encode(args) -> int:
    from bertserve.encode.encoder import Encoder
    import numpy as np

    if not args.texts and args.input is None and sys.stdin.isatty():
        raise SystemExit("bertserve encode: give texts as arguments, --input FILE, or pipe them on stdin")
    texts = _read_texts(args)
    inputs = [t.split() for t in texts] if args.is_tokenized else texts
    encoder = Encoder(config=encoder_config_from_args(args))
    vectors, tokens = encoder.encode(inputs, is_tokenized=args.is_tokenized, show_tokens=True,
                                     progress=len(texts) >= PROGRESS_THRESHOLD)
    fmt = args.format or ("npy" if args.output and args.output.endswith(".npy") else "jsonl")
    if fmt == "npy":
        if not args.output:
            raise SystemExit("bertserve encode: --format npy needs --output FILE.npy")
        np.save(args.output, vectors)
        print(f"wrote {vectors.shape} {vectors.dtype} to {args.output}", file=sys.stderr)
        return 0
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    with out if args.output else open(1, "w", closefd=False) as sink:
        for i, (text, vec) in enumerate(zip(texts, vectors)):
            row = {"index": i, "text": text, "vector": vec.tolist()}
            if args.show_tokens:
                row["tokens"] = tokens[i]
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


def run_info(args) -> int:
    from bertserve.models import load_checkpoint

    info = load_checkpoint(args.model).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("encode", help="encode texts into vectors (.npy or JSON lines)")
    p.add_argument("texts", nargs="*", help="texts to encode; 'a ||| b' is a sentence pair")
    p.add_argument("--input", "-i", help="a file with one text per line ('-': stdin)")
    p.add_argument("--output", "-o", help="where to write (.npy, or JSON lines); default: stdout as JSON lines")
    p.add_argument("--format", choices=("npy", "jsonl"))
    p.add_argument("--is-tokenized", action="store_true", help="lines are whitespace-separated tokens")
    p.add_argument("--show-tokens", action="store_true", help="add the tokens to each JSON line")
    add_encoder_arguments(p)
    p.set_defaults(func=run_encode)

    p = subparsers.add_parser("info", help="describe a model folder")
    p.add_argument("--model", help="model folder; default: the bundled all-MiniLM-L6-v2")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)
