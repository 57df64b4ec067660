"""The `bertserve` command: each subcommand lives with the concept it drives and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bertserve.settings import prefer_passive_openmp
from bertserve.errors import BertserveError, describe

# Modules exposing add_parser(subparsers); one line per concept.
COMMAND_MODULES = [
    "bertserve.encode.cli",
    "bertserve.models.google_bert",
    "bertserve.models.registry",
    "bertserve.search.cli",
    "bertserve.serve.cli",
    "bertserve.distill.cli",
    "bertserve.distill.trim_cli",
    "bertserve.tasks.ner.cli",
    "bertserve.tasks.generate.cli",
    "bertserve.tasks.summarize.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertserve", description="BERT-family text vectors: encode, serve, search, distill")
    parser.add_argument("--log-level", default="INFO")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    prefer_passive_openmp()  # before any command module can load torch
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BertserveError as e:
        report = describe(e)
        if report.internal:
            raise
        print(f"bertserve {args.command}: error: {report.message}", file=sys.stderr)
        return report.exit_code
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # a path the user typed: say which, no traceback
        print(f"bertserve {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
