"""`bertserve finetune` and `bertserve distill` (classification; `--objective embedding` hands over to
embed_cli when that module is present, `--objective static` to static_cli)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from bertserve.errors import BadInput

from .augment import AugmentConfig

# losses and training load torch: imported where a command runs, so `bertserve --help` stays light

TASKS = ("classification", "ner")


def _embed_cli():
    try:
        return importlib.import_module("bertserve.distill.embed_cli")
    except ModuleNotFoundError as e:
        if e.name != "bertserve.distill.embed_cli":
            raise
        return None


def _add_training_arguments(p) -> None:
    # Defaults are None here and filled from TrainConfig (or the command's own defaults) in
    # _training_config: `distill --objective embedding` shares these flags and has defaults of its own.
    g = p.add_argument_group("training")
    g.add_argument("--max-seq-len", type=int, default=None, help="token limit (default 128)")
    g.add_argument("--epochs", type=float, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="default 32")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (finetune 5e-5, distill 1e-4)")
    g.add_argument("--head-lr", type=float, default=None,
                   help="peak learning rate of the new output head (default: --lr; finetune --task ner: 3e-3 or --lr if larger)")
    g.add_argument("--warmup", type=float, default=None, help="fraction of steps for linear warm-up (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=None, help="default 0.01")
    g.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without dev improvement (default 2; 0 = off)")
    g.add_argument("--metric", choices=("accuracy", "macro_f1", "f1"), default=None,
                   help="dev metric (default accuracy; f1 = entity F1 for --task ner)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--freeze-embeddings", action="store_true", help="keep the word-embedding table fixed")
    g.add_argument("--no-progress", action="store_true")


def _training_config(args, **defaults):
    from .training import TrainConfig

    given = {name: getattr(args, name) for name in ("max_seq_len", "epochs", "batch_size", "lr", "head_lr", "warmup",
                                                    "weight_decay", "patience", "metric", "seed", "threads")}
    values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    if "epochs" in values:
        if float(values["epochs"]) != int(values["epochs"]):
            raise BadInput(f"--epochs must be a whole number for classification, got {values['epochs']}")
        values["epochs"] = int(values["epochs"])
    return TrainConfig(**values, freeze_embeddings=args.freeze_embeddings, progress=not args.no_progress)


def _layer_map(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer map must be comma-separated teacher layers, e.g. 4,8,12; got {value!r}")


def _ner_cli():
    from bertserve.tasks.ner import cli

    return cli


def run_finetune(args) -> int:
    if args.task == "ner":
        return _ner_cli().run_finetune(args, _training_config(args, metric="f1", patience=0))
    from .finetune import finetune

    result = finetune(args.model, args.train, args.dev, args.out, test=args.test, config=_training_config(args))
    for split in ("dev", "test"):
        if result[split]:
            print(f"{split}: accuracy {result[split]['accuracy']:.4f}  macro-F1 {result[split]['macro_f1']:.4f}")
    print(f"saved classifier with labels {result['label_names']} to {args.out}")
    return 0


def run_distill(args) -> int:
    if args.objective == "static" and args.task != "ner":
        from .static_cli import run_static_distill
        return run_static_distill(args)
    if args.objective == "embedding" and args.task != "ner":
        module = _embed_cli()
        if module is None:
            print("error: --objective embedding is not available in this installation", file=sys.stderr)
            return 2
        return module.run_embedding_distill(args)
    missing = [flag for flag, v in (("--teacher", args.teacher), ("--student", args.student), ("--train", args.train),
                                    ("--dev", args.dev), ("--out", args.out)) if not v]
    if missing:
        print(f"error: {args.task} distillation needs {', '.join(missing)}", file=sys.stderr)
        return 2
    from .losses import LossConfig

    loss = LossConfig(alpha=args.alpha, temperature=args.temperature, schedule=args.temperature_schedule,
                      soft=args.soft_loss, hidden_weight=args.hidden_weight, attention_weight=args.attention_weight,
                      embedding_weight=args.embedding_weight, layer_map=args.layer_map)
    if args.task == "ner":
        return _ner_cli().run_distill(args, _training_config(args, lr=1e-4, metric="f1", patience=0), loss)
    from .kd import DistillConfig, distill

    config = DistillConfig(
        teacher=args.teacher, student=args.student, train=args.train, dev=args.dev, out=args.out, test=args.test,
        unlabeled=args.unlabeled, training=_training_config(args, lr=1e-4), speed_rounds=args.speed_rounds, loss=loss,
        augment=AugmentConfig(copies=args.augment, p_mask=args.p_mask, p_ngram=args.p_ngram, seed=args.seed or 0),
        trim_vocab=args.trim_vocab, trim_min_count=args.trim_min_count or 1)
    result = distill(config)
    models = result["report"]["models"]
    for name, row in models.items():
        print(f"{name}: accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  params {row['params']:,}")
    print(json.dumps({"student_dir": result["out"], "report": f"{result['out']}/report.md"}))
    return 0


def add_parser(subparsers) -> None:
    ft = subparsers.add_parser("finetune", help="fine-tune a BERT-family model as a text classifier or NER tagger")
    ft.add_argument("--task", choices=TASKS, default="classification")
    ft.add_argument("--model", required=True, help="HF or sentence-transformers model folder")
    ft.add_argument("--train", required=True, help="JSONL/CSV/TSV with text[, text_b], label (ner: JSONL with "
                                                   "entities, CoNLL BIO or People's Daily word/tag)")
    ft.add_argument("--dev", required=True)
    ft.add_argument("--test")
    ft.add_argument("--out", required=True)
    _add_training_arguments(ft)
    _ner_cli().add_task_arguments(ft)
    ft.set_defaults(func=run_finetune)

    d = subparsers.add_parser("distill", help="distil a teacher into a smaller student")
    d.add_argument("--objective", choices=("classification", "embedding", "static"), default="classification")
    d.add_argument("--task", choices=TASKS, default="classification", help="ner: distil a tagger (--objective ignored)")
    d.add_argument("--teacher", help="classifier folder from `bertserve finetune`")
    d.add_argument("--student", help="bert:layers=3 | bert:layers=4,hidden=312,heads=12,ff=1200 | bilstm | textcnn "
                                     "(ner: bert:layers=N | bilstm-crf[:embedding=128,hidden=128])")
    d.add_argument("--train")
    d.add_argument("--dev")
    d.add_argument("--test")
    d.add_argument("--unlabeled", help="texts without labels (.txt, one per line, or JSONL/CSV/TSV); the teacher labels them")
    d.add_argument("--out")
    k = d.add_argument_group("distillation loss")
    k.add_argument("--alpha", type=float, default=0.5, help="weight of the soft-target loss; 1 - alpha for hard labels")
    k.add_argument("--temperature", type=float, default=4.0)
    k.add_argument("--temperature-schedule", choices=("constant", "anneal"), default="constant")
    k.add_argument("--soft-loss", choices=("kl", "mse"), default="kl")
    k.add_argument("--hidden-weight", type=float, default=0.0)
    k.add_argument("--attention-weight", type=float, default=0.0)
    k.add_argument("--embedding-weight", type=float, default=0.0)
    k.add_argument("--layer-map", type=_layer_map, default=None, help="teacher layer per student layer, e.g. 4,8,12")
    a = d.add_argument_group("transfer-set augmentation (Tang et al. 2019)")
    a.add_argument("--augment", type=int, default=0, help="synthetic examples per training example")
    a.add_argument("--p-mask", type=float, default=0.1)
    a.add_argument("--p-ngram", type=float, default=0.25)
    d.add_argument("--trim-vocab", action="store_true",
                   help="keep only the tokens the training texts use (plus specials and single characters) in a "
                        "transformer student: a smaller embedding table (classification and embedding objectives)")
    d.add_argument("--trim-min-count", type=int, default=None, help="with --trim-vocab: keep tokens seen this often")
    d.add_argument("--speed-rounds", type=int, default=3, help="interleaved timing rounds for the report (0 = skip)")
    _add_training_arguments(d)
    _ner_cli().add_task_arguments(d)
    module = _embed_cli()
    if module is not None:
        module.add_embedding_arguments(d)
    from .static_cli import add_static_arguments
    add_static_arguments(d)
    d.set_defaults(func=run_distill)
