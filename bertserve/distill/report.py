"""Teacher-vs-student evaluation: quality, size and speed in one run, written as report.json/report.md
with a training-curve plot.

Speed is measured on the same backend (torch, fp32, the same thread count) for every model, in
interleaved rounds, so a neighbour process that slows the machine slows all contenders of that round;
each round also records the CPU seconds that other processes used, to recognise disturbed rounds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bertserve.machine_load import measure_speed as _measure_speed
from bertserve.errors import BadInput

REPORT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def classification_metrics(y_true, y_pred, n_labels: int) -> dict:
    """Accuracy and macro-F1 (scikit-learn's; a label never predicted nor present counts 0). Examples labelled
    -1 (unlabelled) are left out."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise BadInput(f"{len(y_true)} labels but {len(y_pred)} predictions")
    keep = y_true >= 0
    y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.size == 0:
        raise BadInput("no labelled examples to evaluate")
    per_label = f1_score(y_true, y_pred, labels=list(range(n_labels)), average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "macro_f1": float(np.mean(per_label)),
            "per_label_f1": [float(x) for x in per_label]}


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def weights_size_mb(path) -> float:
    """Size of the weight files in a model folder (tokenizer and config files excluded)."""
    files = [p for p in Path(path).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return sum(p.stat().st_size for p in files) / 2**20


def measure_speed(classifiers: dict, texts: list[str], rounds: int = 3, latency_texts: int = 30) -> dict:
    """Throughput (texts/s over `texts`, batched) and single-text latency (ms) per classifier, in interleaved
    rounds (bertserve.machine_load.measure_speed)."""
    runs = _measure_speed({name: clf.classify for name, clf in classifiers.items()}, texts, rounds, latency_texts)
    out = {}
    for name, r in runs.items():
        rows = {"throughput": r["texts_per_s"], "latency_p50_ms": r["latency_p50_ms"], "other_cpu_s": r["other_cpu_s"]}
        out[name] = {
            "throughput_median": float(np.median(r["texts_per_s"])), "throughput_min": float(np.min(r["texts_per_s"])),
            "latency_p50_ms_median": float(np.median(r["latency_p50_ms"])),
            "latency_p50_ms_max": float(np.max(r["latency_p50_ms"])), "rounds": rows}
    return out


def compare(teacher: str, rows: dict) -> dict:
    """Add ratios against the teacher row to every row (quality kept, speed-up, size shrink)."""
    t = rows[teacher]
    for row in rows.values():
        row["accuracy_kept"] = row["accuracy"] / t["accuracy"] if t["accuracy"] else None
        row["macro_f1_kept"] = row["macro_f1"] / t["macro_f1"] if t["macro_f1"] else None
        if "throughput_median" in row and "throughput_median" in t:
            row["speedup"] = row["throughput_median"] / t["throughput_median"]
            row["latency_ratio"] = t["latency_p50_ms_median"] / row["latency_p50_ms_median"]
        row["params_ratio"] = t["params"] / row["params"]
        row["size_ratio"] = t["size_mb"] / row["size_mb"] if row["size_mb"] else None
    return rows


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(rows: dict) -> str:
    head = ("| model | accuracy | macro-F1 | acc. kept | params (M) | weights (MB) | texts/s (median, min) "
            "| speed-up | 1-text p50 ms | latency ratio |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {_fmt(r.get('accuracy_kept'), '.3f')} "
            f"| {r['params'] / 1e6:.1f} | {r['size_mb']:.1f} "
            f"| {_fmt(r.get('throughput_median'), '.0f')}, {_fmt(r.get('throughput_min'), '.0f')} "
            f"| {_fmt(r.get('speedup'), '.2f')}x | {_fmt(r.get('latency_p50_ms_median'), '.2f')} "
            f"| {_fmt(r.get('latency_ratio'), '.2f')}x |")
    return head + "\n".join(lines) + "\n"


def plot_history(histories: dict, path) -> None:
    """Train loss and dev accuracy per epoch, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        ax_loss.plot(epochs, [h["train_loss"] for h in hist], marker="o", label=name)
        ax_dev.plot(epochs, [h["dev_accuracy"] for h in hist], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_dev.set(xlabel="epoch", ylabel="dev accuracy", title="dev metric")
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out_dir, teacher: str, rows: dict, histories: dict, settings: dict) -> dict:
    """report.json, report.md and training_curves.png in out_dir; returns the report dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(teacher, rows)
    report = {"version": REPORT_VERSION, "teacher": teacher, "models": rows, "histories": histories,
              "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    speed = settings.get("speed", {})
    md = [f"# Distillation report ({report['created']})", "",
          f"Teacher: `{teacher}`. Test set: {settings.get('test_source', '?')} ({settings.get('test_size', '?')} texts).",
          f"Speed: backend {speed.get('backend', 'torch fp32')}, {speed.get('threads', '?')} threads, "
          f"{speed.get('rounds', '?')} interleaved rounds over the test texts, batch {speed.get('batch_size', '?')}; "
          "latency is the median of one-text calls.", "", markdown_table(rows)]
    if any(histories.values()):
        plot_history(histories, out / "training_curves.png")
        md += ["", "![training curves](training_curves.png)"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return report
