"""Serving named models: mixed per-request options against one option set, and the memory of one model vs two.

Throughput: 8 concurrent HTTP clients send requests of 32 texts to one server. "single" sends every request
with the server's own settings; "mixed" rotates four option sets (the default, CLS_TOKEN, REDUCE_MAX of layer
-2, token vectors of 32 positions), which the server batches together and computes in shared forward passes.
Rounds interleave the two and record the CPU time other processes used meanwhile, so disturbed rounds show.

Memory: the server's RSS after a warm-up request, serving all-MiniLM-L6-v2 alone and with multilingual-e5-small
next to it (--model a --model zh=multilingual-e5-small), when this build serves several models.

    PYTHONPATH=. python benchmarks/serve_models.py            # 1,280 texts, 3 rounds
    PYTHONPATH=. python benchmarks/serve_models.py --quick    # 256 texts, 1 round: proves it runs
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve import REQUEST_TEXTS, Meter, corpus  # noqa: E402

from bertserve.serve.process import ServerProcess  # noqa: E402

MIXED = [{}, {"pooling": "CLS_TOKEN"}, {"pooling": "REDUCE_MAX", "layers": [-2]}, {"layers": [-1, -2]}]
CLIENTS = 8
RESULTS = Path(__file__).resolve().parent / "results"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send_all(url: str, texts: list[str], option_sets: list[dict]) -> None:
    """CLIENTS threads pull requests of REQUEST_TEXTS texts off one queue; request k uses option set k mod len."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for k, s in enumerate(range(0, len(texts), REQUEST_TEXTS)):
        todo.put((s, option_sets[k % len(option_sets)]))
    errors = []

    def work():
        with httpx.Client(base_url=url, timeout=600) as h:
            while True:
                try:
                    s, options = todo.get_nowait()
                except queue.Empty:
                    return
                r = h.post("/encode", json={"texts": texts[s:s + REQUEST_TEXTS], **options})
                if r.status_code != 200:
                    errors.append(r.text)
                    return
    threads = [threading.Thread(target=work) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"request errors: {errors[:3]}")


def throughput(texts: list[str], rounds: int) -> dict:
    srv = ServerProcess("--no-zmq", "--backend", "torch", startup_timeout=600)
    try:
        send_all(srv.url, texts[:64], MIXED)  # warm-up: every option set once
        rows = {"single": [], "mixed": []}
        for r in range(rounds):
            for name in (("single", "mixed") if r % 2 == 0 else ("mixed", "single")):
                with Meter([srv.proc.pid]) as m:  # this process counts as ours already
                    send_all(srv.url, texts, [{}] if name == "single" else MIXED)
                wall, other = m.sample.wall, m.sample.others_cpu
                rows[name].append({"per_s": len(texts) / wall, "other_cpu_s": other, "wall_s": wall})
                print(f"  round {r + 1} {name:6s} {len(texts) / wall:7.1f} texts/s  other CPU {other:5.1f} s",
                      flush=True)
    finally:
        srv.stop()
    return {name: {"median_per_s": statistics.median(x["per_s"] for x in v),
                   "min_per_s": min(x["per_s"] for x in v), "rounds": v} for name, v in rows.items()}


def memory() -> dict:
    out = {}
    for label, flags in (("one model (all-MiniLM-L6-v2)", ["--model", "all-MiniLM-L6-v2"]),
                         ("two models (+ zh=multilingual-e5-small)",
                          ["--model", "all-MiniLM-L6-v2", "--model", "zh=multilingual-e5-small"])):
        try:
            srv = ServerProcess("--no-zmq", "--backend", "torch", *flags, startup_timeout=600)
        except RuntimeError as e:  # a build without several models per server refuses the second --model
            out[label] = f"not served: {str(e).splitlines()[0][:200]}"
            continue
        try:
            with httpx.Client(base_url=srv.url, timeout=600) as h:
                served = [m["id"] for m in h.get("/v1/models").json()["data"]]
                if "two" in label and len(served) < 2:
                    out[label] = f"not served: this build serves one model ({served})"
                    continue
                for name in served:
                    h.post("/encode", json={"texts": ["warm up", "预热"], **({"model": name} if len(served) > 1 else {})})
            out[label] = round(rss_mib(srv.proc.pid), 1)
        finally:
            srv.stop()
        print(f"  {label}: {out[label]} MiB", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=1280)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256 texts, 1 round")
    p.add_argument("--no-memory", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.texts, args.rounds = 256, 1
    texts = corpus(args.texts)
    report = {"command": " ".join(sys.argv), "texts": len(texts), "clients": CLIENTS, "request_texts": REQUEST_TEXTS,
              "cpus": os.cpu_count(), "throughput": throughput(texts, args.rounds)}
    if not args.no_memory:
        report["rss_mib"] = memory()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("serve-models-quick.json" if args.quick else "serve-models.json")
    out.write_text(json.dumps(report, indent=1))
    t = report["throughput"]
    print(f"single {t['single']['median_per_s']:.1f} texts/s, mixed {t['mixed']['median_per_s']:.1f} texts/s "
          f"(ratio {t['mixed']['median_per_s'] / t['single']['median_per_s']:.2f}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
