"""How long a new user waits: `import bertserve`, the first `Encoder()` on a fresh cache (default backend
`auto`), its first encode, then `Encoder(pooling="REDUCE_MAX")` after it, and how long the background `auto`
measurement takes to decide.

Each run is a fresh interpreter with an empty BERTSERVE_CACHE, so nothing is remembered between runs; the CPU
time other processes used during each run is recorded (bertserve.machine_load), so a disturbed run shows.

    PYTHONPATH=. .venv/bin/python benchmarks/first_encoder.py            # 3 runs
    PYTHONPATH=. .venv/bin/python benchmarks/first_encoder.py --quick    # 1 run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertserve.machine_load import Meter  # noqa: E402

PROBE = """
import json, time
t0 = time.perf_counter()
import bertserve
t1 = time.perf_counter()
enc = bertserve.Encoder()
t2 = time.perf_counter()
enc.encode(["hello world"])
t3 = time.perf_counter()
bertserve.Encoder(pooling="REDUCE_MAX")
t4 = time.perf_counter()
record = enc.wait_for_backend()
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_encoder_s": t2 - t1, "first_encode_s": t3 - t2,
                  "reduce_max_encoder_s": t4 - t3, "decision_after_s": t5 - t1,
                  "chosen": (record or {}).get("backend")}))
"""


def one_run() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "BERTSERVE_CACHE": cache, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        env.pop("BERTSERVE_BACKEND", None)  # the default, `auto`, is what a new user gets
        with Meter() as m:
            done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["auto_dirs"] = sum(1 for d in Path(cache).iterdir() if d.name.startswith("auto-"))
    row["others_cores"] = m.sample.others_cpu / max(m.sample.wall, 1e-9)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run")
    args = ap.parse_args()
    rows = [one_run() for _ in range(1 if args.quick else args.runs)]
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))
    keys = ("import_s", "first_encoder_s", "first_encode_s", "reduce_max_encoder_s", "decision_after_s")
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.1f}" for k in keys)
          + f"; other processes kept {statistics.median(r['others_cores'] for r in rows):.2f} cores busy")


if __name__ == "__main__":
    main()
