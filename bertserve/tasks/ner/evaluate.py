"""Entity-level scores with seqeval (strict mode, IOB2: an entity counts only with the right type and both
edges), speed in characters per second and one-sentence latency, and the distiller's report files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from bertserve.distill.report import count_parameters, measure_speed, weights_size_mb, write_report

from .data import Example, bio_tags, spans_from_tags


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro precision/recall/F1 and per type, from per-character tag sequences."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in number or length")
    report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
            "support": int(micro["support"]), "per_type": per_type}


def served_tags(texts: list[str], tags: list[list[str]]) -> list[list[str]]:
    """Tags of the entities the service answers with (broken BIO repaired as data.spans_from_tags does), so
    the scores are those of what a caller gets."""
    return [bio_tags(text, spans_from_tags(t)) for text, t in zip(texts, tags)]


def evaluate_tagger(tagger, examples: list[Example]) -> dict:
    gold = [bio_tags(ex.text, ex.entities) for ex in examples]
    texts = [ex.text for ex in examples]
    return entity_scores(gold, served_tags(texts, tagger.tag_texts(texts)))


def cached_evaluation(tagger, examples: list[Example]) -> dict:
    """evaluate_tagger, kept in the tagger's folder per test set, so the distiller's report does not tag the
    test lines with the (slow) teacher again when fine-tuning already did."""
    key = hashlib.sha1(json.dumps([tagger.max_seq_len, [ex.to_json() for ex in examples]],
                                  ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    path = Path(tagger.path) / f"evaluation-{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = evaluate_tagger(tagger, examples)
    if path.parent.is_dir():
        path.write_text(json.dumps(result, indent=1))
    return result


def ner_table(rows: dict) -> str:
    head = ("| model | kind | F1 | P | R | F1 kept | PER / LOC / ORG F1 | params (M) | weights (MB) "
            "| chars/s (median, min) | speed-up | 1-line p50 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    lines = []
    for name, r in rows.items():
        types = " / ".join(fmt(r["per_type"].get(t, {}).get("f1"), ".3f") for t in ("PER", "LOC", "ORG"))
        lines.append(f"| {name} | {r['kind']} | {r['f1']:.4f} | {r['precision']:.4f} | {r['recall']:.4f} "
                     f"| {fmt(r.get('f1_kept'), '.3f')} | {types} | {r['params'] / 1e6:.1f} | {r['size_mb']:.1f} "
                     f"| {fmt(r.get('chars_per_s_median'), '.0f')}, {fmt(r.get('chars_per_s_min'), '.0f')} "
                     f"| {fmt(r.get('speedup'), '.2f')}x | {fmt(r.get('latency_p50_ms_median'), '.2f')} |")
    return head + "\n".join(lines) + "\n"


def tag_call(tagger, texts):
    return tagger.tag_texts(texts)


def score_and_report(taggers: dict, teacher: str, test: list[Example], speed_rounds: int, settings: dict,
                     histories: dict, out_dir, test_source: str = "?", speed_lines: int = 200) -> dict:
    """Quality, size and interleaved speed of every tagger in `taggers`; report.md/json + curves in out_dir."""
    import torch

    rows = {}
    for name, tagger in taggers.items():
        rows[name] = {"path": tagger.path, "kind": tagger.kind, **cached_evaluation(tagger, test),
                      "params": count_parameters(tagger.model), "size_mb": weights_size_mb(tagger.path)}
    texts = [ex.text for ex in test][:speed_lines]
    if speed_rounds > 0:
        chars_per_text = sum(map(len, texts)) / len(texts)
        for name, speed in measure_speed(taggers, texts, rounds=speed_rounds, call=tag_call).items():
            rows[name].update(speed)
            rows[name]["chars_per_s_median"] = speed["throughput_median"] * chars_per_text
            rows[name]["chars_per_s_min"] = speed["throughput_min"] * chars_per_text
    settings = {**settings, "test_source": test_source, "test_size": len(test), "speed_lines": len(texts),
                "speed": {"backend": "torch fp32 (eager)", "threads": torch.get_num_threads(), "rounds": speed_rounds,
                          "batch_size": "32 windows (transformers), 64 (BiLSTM-CRF)",
                          "mean_chars_per_line": float(np.mean([len(t) for t in texts]))}}
    return write_report(out_dir, teacher, rows, histories, settings, table=ner_table, quality=("f1",),
                        curve_metric="f1", unit="lines")
