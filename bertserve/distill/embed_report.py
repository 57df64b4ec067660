"""How good and how fast a distilled embedding student is, next to its teacher.

Agreement with the teacher on held-out text (mean cosine, top-10 neighbour overlap), Spearman correlation with
human judgements on the rated sets that gensim ships (Lee 50 documents, WordSim353, SimLex999), and speed
with the same backend: sentences per second over interleaved rounds and single-text latency, with the CPU
time other processes took during each round (the machine may be shared), and the student/teacher ratios.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True).clip(1e-12)
    s = student / np.linalg.norm(student, axis=1, keepdims=True).clip(1e-12)
    overlaps = []
    for a in (t, s):
        sim = a @ a.T
        np.fill_diagonal(sim, -np.inf)
        overlaps.append(np.argsort(-sim, axis=1)[:, :k])
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(*overlaps)])
    return {"mean_cosine": float(np.mean(np.sum(t * s, axis=1))), f"top{k}_overlap": float(overlap)}


def _gensim_data() -> Path | None:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    return path if (path / "lee.cor").exists() else None


def _word_pairs(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    pairs, scores = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        pairs.append((a, b))
        scores.append(float(score))
    return pairs, np.array(scores)


def similarity_sets() -> dict[str, tuple[list[tuple[str, str]], np.ndarray]]:
    """name -> (text pairs, human scores); empty when gensim's test data is not installed."""
    data = _gensim_data()
    if data is None:
        return {}
    docs = [line.strip() for line in (data / "lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()]
    human = np.loadtxt(data / "similarities0-1.txt")  # upper triangle of a 50 x 50 matrix
    iu = np.triu_indices(len(docs), k=1)
    return {"lee50": ([(docs[i], docs[j]) for i, j in zip(*iu)], human[iu]),
            "wordsim353": _word_pairs(data / "wordsim353.tsv"),
            "simlex999": _word_pairs(data / "simlex999.txt")}


def spearman(encode, sets: dict) -> dict[str, float]:
    """Spearman rho between the cosine of each pair's vectors and the human score."""
    from scipy.stats import spearmanr

    out = {}
    for name, (pairs, human) in sets.items():
        texts = sorted({t for pair in pairs for t in pair})
        vec = dict(zip(texts, encode(texts)))
        cos = [float(np.dot(vec[a], vec[b]) / (np.linalg.norm(vec[a]) * np.linalg.norm(vec[b]) + 1e-12))
               for a, b in pairs]
        out[name] = float(spearmanr(cos, human).statistic)
    return out


def _busy_ticks() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, ticks used by this process) from /proc."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds other processes used meanwhile)."""
    busy0, own0 = _busy_ticks()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    busy1, own1 = _busy_ticks()
    return wall, max(0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK")


def speed(encoders: dict[str, tuple[object, str]], texts: list[str], config: ReportConfig) -> dict:
    """Throughput and latency of each (encoder, prefix), rounds interleaved so that load hits all alike."""
    texts = texts[: config.speed_texts]
    names = list(encoders)
    rounds = {n: [] for n in names}
    for r in range(config.rounds):
        for name in names if r % 2 == 0 else reversed(names):  # alternate who goes first
            enc, prefix = encoders[name]
            batch = [prefix + t for t in texts]
            wall, other = _timed(lambda: enc.encode(batch))
            rounds[name].append({"texts_per_s": len(texts) / wall, "other_cpu_s": other})
    singles = texts[: config.latency_texts]
    latency = {n: [] for n in names}
    for enc, prefix in encoders.values():
        enc.encode([prefix + singles[0]])  # warm-up
    for t in singles:  # one text through every model in turn, so a burst of load hits them alike
        for name in names:
            enc, prefix = encoders[name]
            latency[name].append(_timed(lambda: enc.encode([prefix + t]))[0] * 1000)
    out = {}
    for name in names:
        lat = latency[name]
        tps = [x["texts_per_s"] for x in rounds[name]]
        out[name] = {"texts_per_s_median": statistics.median(tps), "texts_per_s_min": min(tps),
                     "latency_ms_p50": statistics.median(lat), "latency_ms_p90": float(np.percentile(lat, 90)),
                     "rounds": rounds[name]}
    return out


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


def markdown(report: dict) -> str:
    a, sp, spd = report["agreement"], report["spearman"], report["speed"]
    lines = ["| metric | teacher | student | student / teacher |", "|---|---|---|---|"]
    for name in sp["student"]:
        lines.append(f"| Spearman {name} | {sp['teacher'][name]:.3f} | {sp['student'][name]:.3f} | "
                     f"{sp['ratio'][name]:.3f} |")
    t, s = spd["teacher"], spd["student"]
    lines.append(f"| texts/s (median of {len(t['rounds'])}) | {t['texts_per_s_median']:.0f} | "
                 f"{s['texts_per_s_median']:.0f} | {spd['throughput_ratio']:.2f} |")
    lines.append(f"| latency p50, ms | {t['latency_ms_p50']:.1f} | {s['latency_ms_p50']:.1f} | {spd['latency_ratio']:.2f} |")
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
