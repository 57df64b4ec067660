"""Chinese NER side by side on the same held-out People's Daily lines: bertserve taggers (teacher, students)
against jieba's part-of-speech tagger and a character CRF (sklearn-crfsuite), as their users would run them.

- jieba.posseg (default dictionary, HMM on): words tagged nr*/ns*/nt* are read as PER/LOC/ORG; consecutive
  nr words are one person, as in the data conversion (bertserve.tasks.ner.data).
- sklearn-crfsuite: a linear-chain CRF over characters with classic window features (the character, its
  neighbours at -2..+2, bigrams around it, digit/latin/punctuation classes), L-BFGS with c1=0.1, c2=0.1,
  trained on the same training lines the taggers saw (first --crf-train-lines of them).

Quality: seqeval strict entity F1 (micro and per type) on every test line. Speed: characters per second over
--speed-lines test lines (batched where the tool batches) and the median one-line latency, in interleaved
rounds; each round records the CPU seconds other processes used, to recognise a disturbed round.

    python benchmarks/ner.py --data runs/pd --tagger teacher=runs/teacher --tagger crf=runs/student-crf
    python benchmarks/ner.py --quick          # small sizes: proves the script runs (CRF on 500 lines, 200 test)
The split (`bertserve ner-convert --out DIR`) is made when --data has none.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from bertserve.distill.report import measure_speed  # noqa: E402
from bertserve.tasks.ner.data import bio_tags, convert_peoples_daily, peoples_daily_path, read_jsonl  # noqa: E402
from bertserve.tasks.ner.evaluate import entity_scores, served_tags  # noqa: E402

JIEBA_LABELS = (("nr", "PER"), ("ns", "LOC"), ("nt", "ORG"))


class JiebaPeer:
    kind = "jieba.posseg 0.42"

    def __init__(self):
        import jieba
        import jieba.posseg

        jieba.setLogLevel(60)
        jieba.initialize()
        self.posseg = jieba.posseg

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        spans, pos, last = [], 0, None
        for word, flag in self.posseg.cut(text):
            label = next((lab for prefix, lab in JIEBA_LABELS if flag.startswith(prefix)), None)
            if label == "PER" and last == "PER":
                spans[-1] = (spans[-1][0], pos + len(word), label)
            elif label is not None:
                spans.append((pos, pos + len(word), label))
            pos += len(word)
            last = label
        return spans

    def tag_texts(self, texts):
        return [bio_tags(t, self.spans(t)) for t in texts]


def _char_class(c: str) -> str:
    if c.isdigit() or c in "０１２３４５６７８９":
        return "digit"
    if c.isascii() and c.isalpha():
        return "latin"
    if not c.isalnum():
        return "punct"
    return "cjk"


def char_features(text: str) -> list[dict]:
    padded = ["<s2>", "<s1>", *text, "</s1>", "</s2>"]
    feats = []
    for i in range(len(text)):
        j = i + 2
        c = padded[j]
        feats.append({"bias": 1.0, "c": c, "class": _char_class(c), "c-1": padded[j - 1], "c+1": padded[j + 1],
                      "c-2": padded[j - 2], "c+2": padded[j + 2], "c-1c": padded[j - 1] + c, "cc+1": c + padded[j + 1],
                      "c-1c+1": padded[j - 1] + padded[j + 1]})
    return feats


class CrfPeer:
    kind = "sklearn-crfsuite 0.5 (char CRF)"

    def __init__(self, train, iterations: int):
        import sklearn_crfsuite

        self.crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=0.1, c2=0.1, max_iterations=iterations,
                                        all_possible_transitions=True)
        t0 = time.perf_counter()
        self.crf.fit([char_features(ex.text) for ex in train], [bio_tags(ex.text, ex.entities) for ex in train])
        self.train_seconds = time.perf_counter() - t0

    def tag_texts(self, texts):
        return [list(tags) for tags in self.crf.predict([char_features(t) for t in texts])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/pd", help="folder with train/dev/test.jsonl (made if missing)")
    ap.add_argument("--tagger", action="append", default=[], help="NAME=FOLDER of a bertserve tagger (repeatable)")
    ap.add_argument("--test-lines", type=int, default=None, help="first N test lines (default all)")
    ap.add_argument("--speed-lines", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--crf-train-lines", type=int, default=None, help="default: every training line")
    ap.add_argument("--crf-iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="CRF on 500 lines, 200 test lines, 50 timed, 2 rounds")
    ap.add_argument("--out", default="benchmarks/results/ner")
    args = ap.parse_args(argv)
    if args.quick:
        args.test_lines, args.speed_lines, args.rounds = args.test_lines or 200, 50, 2
        args.crf_train_lines, args.crf_iterations = args.crf_train_lines or 500, 30

    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "test.jsonl").is_file():
        convert_peoples_daily(peoples_daily_path(), data)
    test = read_jsonl(data / "test.jsonl")[: args.test_lines or None]
    train = read_jsonl(data / "train.jsonl")[: args.crf_train_lines or None]

    from bertserve.tasks.ner.model import load_tagger

    models = {"jieba.posseg": JiebaPeer(), "crfsuite char CRF": CrfPeer(train, args.crf_iterations)}
    for spec in args.tagger:
        name, _, folder = spec.partition("=")
        models[name] = load_tagger(folder)

    texts = [ex.text for ex in test]
    gold = [bio_tags(ex.text, ex.entities) for ex in test]
    rows = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        pred = model.tag_texts(texts)
        pred = served_tags(texts, pred)  # broken BIO repaired as the service does
        rows[name] = {"kind": model.kind, **entity_scores(gold, pred), "tag_all_s": time.perf_counter() - t0}
        print(f"{name}: F1 {rows[name]['f1']:.4f}", flush=True)
    timed = texts[: args.speed_lines]
    chars = sum(map(len, timed)) / len(timed)
    for name, speed in measure_speed(models, timed, rounds=args.rounds, call=lambda m, t: m.tag_texts(t)).items():
        rows[name].update(speed, chars_per_s_median=speed["throughput_median"] * chars,
                          chars_per_s_min=speed["throughput_min"] * chars)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"test_lines": len(test), "speed_lines": len(timed), "rounds": args.rounds, "threads": args.threads,
                "crf_train_lines": len(train), "crf_iterations": args.crf_iterations,
                "crf_train_seconds": round(models["crfsuite char CRF"].train_seconds, 1), "quick": args.quick,
                "machine": platform.processor() or platform.machine(), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "ner.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1, ensure_ascii=False))
    lines = ["| system | F1 | P | R | PER / LOC / ORG F1 | chars/s (median, min) | 1-line p50 ms | other-CPU s per round |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        per = " / ".join(f"{r['per_type'].get(t, {}).get('f1', 0):.3f}" for t in ("PER", "LOC", "ORG"))
        other = ", ".join(f"{x:.1f}" for x in r["rounds"]["other_cpu_s"] if x is not None)
        lines.append(f"| {name} | {r['f1']:.4f} | {r['precision']:.4f} | {r['recall']:.4f} | {per} "
                     f"| {r['chars_per_s_median']:.0f}, {r['chars_per_s_min']:.0f} | {r['latency_p50_ms_median']:.2f} "
                     f"| {other} |")
    table = "\n".join(lines)
    (out / "ner.md").write_text(f"# NER benchmark ({settings['created']})\n\n```\n{json.dumps(settings)}\n```\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
