"""Serving against in-process encoding, side by side in one run, on one corpus and one backend.

Throughput: in-process `Encoder.encode` vs 1, 4 and 16 concurrent clients over HTTP (bertserve's Client) and
over ZeroMQ (bert-serving-client's BertClient), requests of 32 texts. Latency: one short sentence, p50 over
each path minus in-process p50. Server RSS. Optionally (--workers) threads vs processes as encoder workers.

Rounds interleave the contenders (rotating the order) and each measurement records the CPU time that other
processes used meanwhile (/proc/stat minus this process and the server), so disturbed rounds show.

    PYTHONPATH=. python benchmarks/serve.py --texts 640 --rounds 3 [--workers]
"""
from __future__ import annotations

import os

# the server child gets the same; set before torch loads OpenMP (see README, "Serve")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import queue  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bertserve.machine_load import Meter  # noqa: E402
from bertserve.evaluation import lee_background_sentences  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
REQUEST_TEXTS = 32
SAME_REQUESTS = "in-process, requests of 32 in turn"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def corpus(n: int) -> list[str]:
    return lee_background_sentences(min_words=4)[:n]


# ---- contenders -----------------------------------------------------------------------------------------

def run_clients(make_client, texts, concurrency) -> np.ndarray:
    """`concurrency` threads, each with its own client, pull requests of REQUEST_TEXTS texts off one queue."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    starts = list(range(0, len(texts), REQUEST_TEXTS))
    for s in starts:
        todo.put(s)
    out, errors = {}, []
    clients = [make_client() for _ in range(concurrency)]

    def work(client):
        try:
            while True:
                try:
                    s = todo.get_nowait()
                except queue.Empty:
                    return
                out[s] = client.encode(texts[s:s + REQUEST_TEXTS])
        except Exception as e:  # reported, and the figure is discarded
            errors.append(e)
    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"client errors: {errors[:3]}")
    return np.concatenate([out[s] for s in starts])


def min_cosine(a, b) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def throughput(enc, srv, texts, rounds, concurrencies):
    from bert_serving.client import BertClient

    from bertserve.client import Client

    # two in-process peers: the whole corpus in one call (sorted by length over all texts), and the same
    # requests of REQUEST_TEXTS one after the other (what one client can hand a server)
    contenders = {"in-process Encoder.encode": lambda: enc.encode(texts),
                  SAME_REQUESTS: lambda: np.concatenate([enc.encode(texts[s:s + REQUEST_TEXTS])
                                                         for s in range(0, len(texts), REQUEST_TEXTS)])}
    for c in concurrencies:
        contenders[f"HTTP, {c} clients"] = lambda c=c: run_clients(lambda: Client(srv.url, timeout=600), texts, c)
        contenders[f"ZeroMQ BertClient, {c} clients"] = lambda c=c: run_clients(
            lambda: BertClient(port=srv.port, port_out=srv.port_out, timeout=600000), texts, c)
    names = list(contenders)
    rows = {n: [] for n in names}
    reference = enc.encode(texts)  # also warms both sides up
    run_clients(lambda: Client(srv.url), texts[:64], 2)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            with Meter((srv.proc.pid,)) as m:
                got = contenders[name]()
            cos = min_cosine(got, reference)
            rows[name].append({"per_s": len(texts) / m.sample.wall, "other_cpu_s": m.sample.others_cpu, "wall_s": m.sample.wall,
                               "per_cpu_s": len(texts) / max(m.sample.own_cpu, 1e-9), "min_cos": cos})
            print(f"  round {r + 1} {name:34s} {len(texts) / m.sample.wall:7.1f} texts/s  "
                  f"{len(texts) / max(m.sample.own_cpu, 1e-9):6.1f} texts/CPU-s  other CPU {m.sample.others_cpu:5.1f} s"
                  f"  min cos {cos:.6f}", flush=True)
    return rows


def latency(enc, srv, requests):
    import httpx
    from bert_serving.client import BertClient

    from bertserve.client import Client

    bc = BertClient(port=srv.port, port_out=srv.port_out)
    client = Client(srv.url)
    raw = httpx.Client(base_url=srv.url)
    paths = {
        "in-process Encoder.encode": lambda: enc.encode([SENTENCE]),
        "ZeroMQ BertClient": lambda: bc.encode([SENTENCE]),
        "HTTP bertserve Client (/encode, base64)": lambda: client.encode([SENTENCE]),
        "HTTP /v1/embeddings (JSON floats)": lambda: raw.post("/v1/embeddings", json={"input": SENTENCE}).json(),
    }
    for f in paths.values():
        for _ in range(5):
            f()
    # one request of each path in turn, order rotating: a burst from another process hits all paths alike,
    # and the per-request differences to in-process give a robust overhead estimate
    names = list(paths)
    times = {n: [] for n in names}
    with Meter((srv.proc.pid,)) as m:
        for i in range(requests):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                paths[name]()
                times[name].append(time.perf_counter() - t0)
    bc.close()
    client.close()
    raw.close()
    base = np.array(times[names[0]])
    ms = lambda x: round(1000 * float(x), 2)  # noqa: E731
    return {n: {"p50_ms": ms(np.median(t)), "p90_ms": ms(np.percentile(t, 90)),
                "overhead_ms": ms(np.median(np.array(t) - base)), "n": len(t),
                "other_cpu_s_all_paths": round(m.sample.others_cpu, 1)} for n, t in times.items()}


def rss_mb(pid) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
    return {"rss_mb": round(get("VmRSS"), 1), "peak_rss_mb": round(get("VmHWM"), 1)}


# ---- threads or processes as encoder workers ------------------------------------------------------------

def _process_worker(texts, ready, go, done):
    import torch

    from bertserve import Encoder

    torch.set_num_threads(1)
    enc = Encoder()
    enc.encode(texts[:32])
    ready.wait()
    go.wait()
    enc.encode(texts)
    done.wait()


def workers(enc, texts, rounds):
    """Two cores, three ways: 1 thread x 2 torch threads; 2 threads x 1; 2 processes x 1 (model loaded twice)."""
    import torch

    halves = [texts[0::2], texts[1::2]]

    def one_thread_two_torch():
        torch.set_num_threads(2)
        enc.encode(texts)

    def two_threads_one_torch():
        torch.set_num_threads(1)
        ts = [threading.Thread(target=enc.encode, args=(h,)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    ctx = mp.get_context("spawn")
    results = {"1 worker thread, 2 torch threads": [], "2 worker threads, 1 torch thread each": [],
               "2 worker processes, 1 torch thread each": []}
    for r in range(rounds):
        for name, f in [("1 worker thread, 2 torch threads", one_thread_two_torch),
                        ("2 worker threads, 1 torch thread each", two_threads_one_torch)]:
            with Meter() as m:
                f()
            results[name].append({"per_s": len(texts) / m.sample.wall, "other_cpu_s": m.sample.others_cpu})
        ready, go, done = ctx.Barrier(3), ctx.Barrier(3), ctx.Barrier(3)
        procs = [ctx.Process(target=_process_worker, args=(h, ready, go, done)) for h in halves]
        for p in procs:
            p.start()
        ready.wait()
        with Meter([p.pid for p in procs]) as m:
            go.wait()
            done.wait()
        for p in procs:
            p.join()
        results["2 worker processes, 1 torch thread each"].append(
            {"per_s": len(texts) / m.sample.wall, "other_cpu_s": m.sample.others_cpu})
        print(f"  workers round {r + 1}: " + ", ".join(f"{k}: {v[-1]['per_s']:.0f}/s" for k, v in results.items()),
              flush=True)
    torch.set_num_threads(2)
    return results


def summary(rows: list[dict]) -> dict:
    per_s = [x["per_s"] for x in rows]
    out = {"median_per_s": round(statistics.median(per_s), 1), "min_per_s": round(min(per_s), 1),
           "other_cpu_s": [round(x["other_cpu_s"], 1) for x in rows]}
    if "per_cpu_s" in rows[0]:
        # texts per CPU-second of our own processes (client side included): what the path costs, whatever
        # the other processes on the machine are doing
        out["median_per_cpu_s"] = round(statistics.median(x["per_cpu_s"] for x in rows), 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=150)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--num-worker", type=int, default=1, help="server worker threads")
    ap.add_argument("--workers", action="store_true", help="also compare threads and processes as workers")
    ap.add_argument("--out", default="benchmarks/results/serve.json", help="where to write the figures (JSON)")
    args = ap.parse_args()

    from bertserve import Encoder
    from bertserve.serve.process import ServerProcess

    texts = corpus(args.texts)
    enc = Encoder()
    # On a fresh cache `auto` decides here first, so the server reads that decision instead of timing backends
    # at the same time on the same cores (two decisions disturbing each other)
    results_choice = enc.wait_for_backend()
    srv = ServerProcess("--num-worker", str(args.num_worker))
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "texts": len(texts),
               "rounds": args.rounds, "num_worker": args.num_worker, "cpus": os.cpu_count(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "backend": enc.backend.name, "auto_timings": (results_choice or {}).get("timings")}
    try:
        results["rss_after_start"] = rss_mb(srv.proc.pid)
        print(f"throughput, {len(texts)} texts, requests of {REQUEST_TEXTS}:", flush=True)
        rows = throughput(enc, srv, texts, args.rounds, [int(c) for c in args.concurrency.split(",")])
        results["throughput"] = {n: summary(r) for n, r in rows.items()}
        base = results["throughput"]["in-process Encoder.encode"]
        same = results["throughput"][SAME_REQUESTS]
        for v in results["throughput"].values():
            v["ratio_to_in_process"] = round(v["median_per_s"] / base["median_per_s"], 3)
            v["cpu_ratio_to_in_process"] = round(v["median_per_cpu_s"] / base["median_per_cpu_s"], 3)
            v["cpu_ratio_to_same_requests"] = round(v["median_per_cpu_s"] / same["median_per_cpu_s"], 3)
        print("latency, one sentence:", flush=True)
        results["latency"] = latency(enc, srv, args.latency_requests)
        time.sleep(2.5)  # the server hands free heap back after 1 s idle
        results["rss_idle_after_load"] = rss_mb(srv.proc.pid)
    finally:
        srv.stop()
    if args.workers:
        print("workers:", flush=True)
        results["workers"] = {k: summary(v) for k, v in workers(enc, texts, args.rounds).items()}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
