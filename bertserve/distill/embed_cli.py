"""Command-line options and handler of ``bertserve distill --objective embedding``.

The ``distill`` subcommand is registered by the classification side, which dispatches on --objective:
it calls ``add_embedding_arguments(parser)`` while building its parser and ``run_embedding_distill(args)``
when the objective is "embedding". Options both sides need (--teacher, --student, --out, --lr, ...) are
added only once: whichever side adds them first owns the flag, and defaults missing here come from
EmbeddingDistillConfig.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from bertserve.distill.embedding_config import EmbeddingDistillConfig
from bertserve.errors import BadInput

_CONFIG_FIELDS = {f.name: f for f in fields(EmbeddingDistillConfig)}


def _add(parser: argparse.ArgumentParser, group, flag: str, **kwargs) -> None:
    if flag in parser._option_string_actions:  # already defined by the other objective
        return
    group.add_argument(flag, **kwargs)


def add_embedding_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sentence-embedding objective (--objective embedding)")
    add = lambda flag, **kw: _add(parser, g, flag, **kw)  # noqa: E731
    add("--teacher", default=None, help="teacher model folder (default: the bundled all-MiniLM-L6-v2)")
    add("--student", default=None, help="student spec, e.g. bert:layers=3 or bert:layers=4,hidden=312,heads=12,ff=1200")
    add("--texts", nargs="+", default=None, metavar="FILE", help="training texts, one per line")
    add("--parallel", nargs="+", default=None, metavar="FILE",
        help="parallel texts, 'source<TAB>translation' per line; both learn the teacher's vector of the source")
    add("--student-vocab", default=None, metavar="VOCAB_TXT", help="WordPiece vocab.txt for a student with another tokenizer")
    add("--trim-vocab", action="store_true",
        help="keep only the tokens the training texts use (plus specials and single characters): a smaller table")
    add("--trim-min-count", type=int, default=None, help="with --trim-vocab: keep tokens seen this often (default 1)")
    add("--student-init", default=None, metavar="DIR", help="start the student from this model folder")
    add("--teacher-prefix", default=None, help="text prepended for the teacher only (e5 models: 'query: ')")
    add("--no-projection", action="store_true", help="fail instead of adding a projection when widths differ")
    add("--cosine-weight", type=float, default=None, help="weight of an extra (1 - cosine) loss term (default 0)")
    add("--relation-weight", type=float, default=None,
        help="weight of the neighbourhood term: KL between the teacher's and the student's softmax similarities "
             "to a bank of teacher vectors (default 0)")
    add("--relation-temperature", type=float, default=None, help="softmax temperature of that term (default 0.05)")
    add("--relation-bank", type=int, default=None, help="teacher vectors drawn per step for that term (default 1024)")
    add("--epochs", type=float, default=None)
    add("--batch-size", type=int, default=None)
    add("--lr", type=float, default=None)
    add("--max-seq-len", type=int, default=None, help="token limit while training (default 128)")
    add("--heldout", type=int, default=None, help="texts held out for the curve and the report (default 500)")
    add("--max-texts", type=int, default=None)
    add("--eval-every", type=int, default=None)
    add("--seed", type=int, default=None)
    add("--cache-dir", default=None, help="where teacher vectors are cached")
    add("--threads", type=int, default=None)
    add("--out", default=None, help="output folder (a sentence-transformers model)")
    add("--no-report", action="store_true", help="skip the evaluation report")
    add("--report-rounds", type=int, default=3, help="interleaved throughput rounds in the report")


def config_from_args(args: argparse.Namespace) -> EmbeddingDistillConfig:
    values = {}
    for name in _CONFIG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = tuple(value) if name in ("texts", "parallel") else value
    values["allow_projection"] = not getattr(args, "no_projection", False)
    if not values.get("out"):
        raise BadInput("--out is required: the folder the student is saved to")
    if not values.get("texts") and not values.get("parallel"):
        raise BadInput("--texts (or --parallel) is required: files of training texts")
    return EmbeddingDistillConfig(**values)


def model_sizes(distiller, out) -> dict:
    """Parameters and weight-file MB of the teacher and of the saved student (projection head included)."""
    from bertserve.distill.report import count_parameters, weights_size_mb

    teacher = distiller.teacher.checkpoint
    return {"teacher": {"params": count_parameters(teacher.model), "size_mb": round(weights_size_mb(teacher.path), 1)},
            "student": {"params": count_parameters(distiller.student) + count_parameters(distiller.head),
                        "size_mb": round(weights_size_mb(out), 1)}}


def size_line(size: dict) -> str:
    t, s = size["teacher"], size["student"]
    return (f"parameters: teacher {t['params'] / 1e6:.1f}M, student {s['params'] / 1e6:.1f}M; weights: teacher "
            f"{t['size_mb']:.1f} MB, student {s['size_mb']:.1f} MB")


def run_embedding_distill(args: argparse.Namespace) -> int:
    from bertserve import Encoder
    from bertserve.distill.embed_export import save_student
    from bertserve.distill.embed_report import (
        ReportConfig,
        evaluate,
        plot_curve,
        write_report,
    )
    from bertserve.distill.embedding import EmbeddingDistiller

    config = config_from_args(args)
    distiller = EmbeddingDistiller(config)
    print(f"teacher {distiller.teacher.checkpoint.path} ({distiller.teacher.config.pooling}, normalize "
          f"{distiller.teacher.config.normalize}); {len(distiller.examples)} training texts, "
          f"{len(distiller.heldout)} held out; student {config.student_init or config.student}")
    history = distiller.train()
    out = save_student(distiller, config.out)
    summary = {"out": str(out), "train_seconds": round(history.seconds, 1),
               "final_heldout_cosine": history.eval_cosine[-1], "size": model_sizes(distiller, out)}
    print(size_line(summary["size"]))
    if getattr(args, "no_report", False) or len(distiller.heldout) <= 10:
        plot_curve(distiller.info()["history"], out / "training_curve.png")
    else:
        student = Encoder(out)
        report = evaluate(distiller.teacher, student, distiller.heldout, distiller.heldout_targets.numpy(),
                          config.teacher_prefix, ReportConfig(rounds=getattr(args, "report_rounds", 3)))
        report["size"] = summary["size"]
        write_report(report, distiller.info()["history"], out / "report")
        print((out / "report" / "report.md").read_text())
        summary.update(agreement=report["agreement"], throughput_ratio=report["speed"]["throughput_ratio"])
    print(json.dumps(summary))
    return 0
