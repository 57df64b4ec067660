"""How the Encoder cuts length-sorted texts into batches: every 32 rows (before) against `length_batches` (least
padded tokens plus a fixed cost per forward call, for several costs), on requests of 32 texts one after the other
(what one server client sends) and on the whole corpus in one call. Interleaved rounds, medians, other processes'
CPU recorded. Chooses encoder.BATCH_COST_TOKENS.

    PYTHONPATH=. .venv/bin/python benchmarks/batching.py [--backends openvino-int8,onnx] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BERTSERVE_CACHE", str(Path(__file__).parent / ".cache"))

import bertserve.encode.encoder as encoder_module  # noqa: E402
from bertserve.encode import Encoder  # noqa: E402
from bertserve.evaluation import lee_background_sentences  # noqa: E402
from bertserve.machine_load import describe_machine, measure_speed, summarize_speed  # noqa: E402

REQUEST = 32
COSTS = ("every 32", 8, 16, 32, 64, 128)


def every_32(lengths, max_rows, batch_cost_tokens):
    return [(i, min(i + max_rows, len(lengths))) for i in range(0, len(lengths), max_rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="openvino-int8,onnx")
    ap.add_argument("--texts", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batching.json")
    args = ap.parse_args()
    texts = lee_background_sentences(min_words=4)[:args.texts]
    dynamic = encoder_module.length_batches
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": describe_machine(),
              "texts": len(texts), "threads": args.threads, "rows": {}}
    for backend in args.backends.split(","):
        enc = Encoder(backend=backend, num_threads=args.threads)

        def contender(cost, per_request):
            def run(batch):
                encoder_module.length_batches = every_32 if cost == "every 32" else dynamic
                encoder_module.BATCH_COST_TOKENS = 0 if cost == "every 32" else cost
                step = REQUEST if per_request else len(batch)
                for s in range(0, len(batch), step):
                    enc.encode(batch[s:s + step])
            return run
        for shape, per_request in (("requests of 32", True), ("one call", False)):
            runs = measure_speed({str(c): contender(c, per_request) for c in COSTS}, texts, rounds=args.rounds,
                                 latency_texts=0)
            for cost, s in summarize_speed(runs).items():
                report["rows"][f"{backend}, {shape}, cost {cost}"] = s
                print(f"{backend:14s} {shape:15s} cost {cost:>8}: {s['texts_per_s_median']:6.1f} texts/s "
                      f"(min {s['texts_per_s_min']:.1f}); others' CPU s {[round(r['other_cpu_s'], 2) for r in s['rounds']]}",
                      flush=True)
    encoder_module.length_batches = dynamic
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
