r"""OpenVINO int8 by NNCF's post-training quantization (static, calibrated on real sentences, its transformer
preset with SmoothQuant) on the cached ONNX export of all-MiniLM-L6-v2: does it pass the quality gate against
torch fp32, and how fast is it next to OpenVINO fp32 and onnxruntime (interleaved rounds, medians, other
processes' CPU recorded)? The probe that chose the recipe of `backend="openvino-int8"` (the FFN outputs kept
fp32); it tries other presets and fp32 sets on its own calibration (the last --calibration sentences of its pool).

    PYTHONPATH=. .venv/bin/python benchmarks/openvino_int8.py --ignore '.*/layer\.[0-9]+/output/dense/MatMul'
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertserve.encode import Encoder
from bertserve.encode.backends.quality import QualityGate, measure_quality
from bertserve.encode.backends.sample import english_sentences
from bertserve.machine_load import describe_machine, measure_speed, summarize_speed


def calibration_feeds(encoder: Encoder, texts: list[str]) -> list[dict]:
    """The exact inputs the encoder hands its backend for `texts` (captured, not rebuilt)."""
    feeds, forward = [], encoder.backend.forward

    def capture(input_ids, attention_mask, token_type_ids):
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if encoder.backend.use_type_ids:
            feed["token_type_ids"] = token_type_ids.numpy()
        feeds.append(feed)
        return forward(input_ids, attention_mask, token_type_ids)

    encoder.backend.forward = capture
    encoder.encode(texts, batch_size=8)
    encoder.backend.forward = forward
    return feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--calibration", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", choices=("performance", "mixed"), default="performance",
                    help="NNCF's preset: symmetric (performance) or asymmetric activations (mixed)")
    ap.add_argument("--ignore", default=None, help="regex of node names NNCF leaves in fp32 (e.g. the FFN outputs)")
    ap.add_argument("--no-speed", action="store_true", help="quality only")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "openvino_int8.json")
    args = ap.parse_args()
    try:
        import nncf
    except ImportError:
        raise SystemExit("this probe needs NNCF: .venv/bin/pip install nncf==3.4.0") from None
    import openvino as ov

    pool = english_sentences(args.sentences + args.calibration)
    texts, calibration = pool[:args.sentences], pool[args.sentences:]
    reference = Encoder(backend="torch", num_threads=args.threads).encode(texts)
    encoders = {name: Encoder(backend=name, num_threads=args.threads) for name in ("onnx", "openvino")}
    int8 = Encoder(backend="openvino", num_threads=args.threads)
    feeds = calibration_feeds(int8, calibration)
    quantized = nncf.quantize(ov.Core().read_model(str(int8.backend.model_path)), nncf.Dataset(feeds),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                              preset=getattr(nncf.QuantizationPreset, args.preset.upper()),
                              ignored_scope=nncf.IgnoredScope(patterns=[args.ignore]) if args.ignore else None)
    int8.backend.use_model(quantized)
    encoders["openvino int8 (nncf)"] = int8
    gate = QualityGate()
    report = {"machine": describe_machine(), "sentences": len(texts), "calibration_texts": len(calibration),
              "threads": args.threads, "preset": args.preset, "ignored": args.ignore, "rows": {}}
    for name, enc in encoders.items():
        q = measure_quality(reference, enc.encode(texts))
        report["rows"][name] = {**q.to_dict(), "gate": q.passes(gate)}
    if args.no_speed:
        print(json.dumps(report["rows"], indent=1))
        return
    runs = measure_speed({n: e.encode for n, e in encoders.items()}, texts, rounds=args.rounds, latency_texts=20)
    speed = summarize_speed(runs)
    for name, t in speed.items():
        report["rows"][name].update(texts_per_s=t["texts_per_s_median"], latency_p50_ms=t["latency_ms_p50"],
                                    other_cpu_s=runs[name]["other_cpu_s"],
                                    vs_onnx=t["texts_per_s_median"] / speed["onnx"]["texts_per_s_median"])
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{report['machine']}; {len(texts)} sentences, calibration {len(calibration)}, {args.threads} threads")
    print(json.dumps(report["rows"], indent=1))


if __name__ == "__main__":
    main()
