"""OpenVINO compile settings for the encode backends: the CPU plugin's per-shape runtime cache
(CPU_RUNTIME_CACHE_CAPACITY) and the precision of the products left unquantized (INFERENCE_PRECISION_HINT),
on openvino-int8 and openvino (fp32) of all-MiniLM-L6-v2. Speed: interleaved rounds in one process (requests of
32 Lee sentences one after another, and single sentences), medians, other processes' CPU recorded. Memory: each
setting in a fresh process running 400 random batch shapes (1-32 rows x 5-80 tokens), RSS before and after.

    PYTHONPATH=. .venv/bin/python benchmarks/openvino_settings.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BERTSERVE_CACHE", str(Path(__file__).parent / ".cache"))

SETTINGS = {  # name -> extra compile properties
    "default cache": {},
    "cache 64": {"CPU_RUNTIME_CACHE_CAPACITY": 64},
    "cache 0": {"CPU_RUNTIME_CACHE_CAPACITY": 0},
    "bf16 hint, cache 64": {"CPU_RUNTIME_CACHE_CAPACITY": 64, "INFERENCE_PRECISION_HINT": "bf16"},
}


def rss_mib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def compiled(xml: str, threads: int, extra: dict):
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                             "INFERENCE_NUM_THREADS": threads,
                                                             "PERFORMANCE_HINT": "LATENCY", **extra})


def memory_child(xml: str, threads: int, setting: str) -> None:
    import numpy as np

    before = rss_mib()
    model = compiled(xml, threads, SETTINGS[setting])
    request, names = model.create_infer_request(), [i.get_any_name() for i in model.inputs]
    after_compile = rss_mib()
    rng = np.random.default_rng(0)
    for _ in range(400):
        shape = (int(rng.integers(1, 33)), int(rng.integers(5, 81)))
        request.infer({n: np.ones(shape, dtype=np.int64) for n in names})
    print(json.dumps({"rss_before_mib": before, "rss_compiled_mib": after_compile, "rss_after_400_shapes_mib": rss_mib()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=640)
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "openvino_settings.json")
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.threads, args.memory_child[1])
        return
    from bertserve.encode import Encoder
    from bertserve.evaluation import lee_background_sentences
    from bertserve.machine_load import describe_machine, measure_speed, summarize_speed

    texts = lee_background_sentences(min_words=4)[:args.texts]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": describe_machine(),
              "threads": args.threads, "texts": len(texts), "rows": {}}
    for backend in ("openvino-int8", "openvino"):
        encoders = {}
        for setting, extra in SETTINGS.items():
            enc = Encoder(backend=backend, num_threads=args.threads)
            b = enc.backend
            b.compiled = compiled(str(b.model_path), b.threads, extra)
            b._outputs = [b.compiled.output(o.get_any_name()) for o in b._outputs]
            b._local = threading.local()
            encoders[setting] = enc

        def requests_of_32(enc):
            return lambda batch: [enc.encode(batch[s:s + 32]) for s in range(0, len(batch), 32)]
        runs = measure_speed({s: requests_of_32(e) for s, e in encoders.items()}, texts, rounds=args.rounds,
                             latency_texts=30)
        xml = str(next(iter(encoders.values())).backend.model_path)
        for setting, s in summarize_speed(runs).items():
            child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--memory-child", xml,
                                    setting], capture_output=True, text=True, check=True)
            row = {**s, **json.loads(child.stdout.strip().splitlines()[-1])}
            report["rows"][f"{backend}, {setting}"] = row
            print(f"{backend:14s} {setting:22s} {row['texts_per_s_median']:6.1f} texts/s (min {row['texts_per_s_min']:.1f}), "
                  f"one sentence p50 {row['latency_ms_p50']:.2f} ms; RSS compiled {row['rss_compiled_mib']} -> "
                  f"{row['rss_after_400_shapes_mib']} MiB after 400 shapes; others' CPU s "
                  f"{[round(r['other_cpu_s'], 2) for r in row['rounds']]}", flush=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
