"""Soak: a real `bertserve serve` under 16 clients mixing encode, search, add and delete for N minutes.

Reports requests and errors per operation, p50/p99 latency per time window, the server's RSS over time
(and whether it keeps growing: the slope over the second half of the run, and what is left after a few
idle seconds, once the server has handed free heap back), and the CPU time the machine's
other processes used in each window, so a disturbed window can be told from a slow server. Writes a JSON
summary and a PNG plot, and keeps the server's log beside them (OUT.log): every 5xx a client got is
reported with its request id and the traceback the server logged under that id. Not part of CI.

    PYTHONPATH=. python benchmarks/soak.py --minutes 10 --clients 16   # the full run
    PYTHONPATH=. python benchmarks/soak.py --minutes 2 --out benchmarks/results/soak-2min   # a proof run
    PYTHONPATH=. python benchmarks/soak.py --minutes 2 --server-env MALLOC_ARENA_MAX=8 ...   # an experiment
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import corpus  # noqa: E402

from bertserve.machine_load import _machine_busy_seconds, process_cpu_seconds  # noqa: E402

# share of each operation in the mix
MIX = {"encode": 0.4, "search": 0.3, "add": 0.2, "delete": 0.1}
IDLE_S = 5.0


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


class Log:
    """Every request as (end time, operation, latency s, HTTP status or -1 for a transport failure), and
    each 5xx answer's operation, status, request id and message."""

    def __init__(self):
        self.rows: list[tuple[float, str, float, int]] = []
        self.failures: list[dict] = []
        self.lock = threading.Lock()

    def add(self, row, response=None):
        with self.lock:
            self.rows.append(row)
            if response is not None and response.status_code >= 500:
                try:
                    error = response.json().get("error", {})
                except ValueError:
                    error = {"message": response.text[:300]}
                self.failures.append({"t": round(row[0], 1), "op": row[1], "status": response.status_code,
                                      "request_id": error.get("request_id"), "message": error.get("message")})


# a logged line starts with its time stamp (bertserve.cli's log format); a traceback's lines do not
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
REQUEST_ID = re.compile(r"request id ([0-9a-f]{16})")


def server_tracebacks(log_text: str) -> dict[str, list[str]]:
    """request id -> the log line naming it and the traceback lines after it."""
    out: dict[str, list[str]] = {}
    current = None
    for line in log_text.splitlines():
        if LOG_LINE.match(line):
            m = REQUEST_ID.search(line)
            current = m.group(1) if m and "internal error" in line else None
            if current:
                out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def explain_failures(failures: list[dict], log_text: str) -> list[dict]:
    """Each 5xx with the server's traceback for its request id (the last lines: where it was raised)."""
    tracebacks = server_tracebacks(log_text)
    return [{**f, "traceback": tracebacks.get(f["request_id"], [])[-12:]} for f in failures]


def client_loop(k: int, url: str, texts: list[str], deadline: float, t0: float, log: Log):
    import httpx

    rng = random.Random(k)
    mine: list[str] = []  # ids this client added and has not deleted yet
    n = 0
    ops, weights = list(MIX), list(MIX.values())
    with httpx.Client(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            if op == "delete" and not mine:
                op = "add"
            if op == "encode":
                call = ("/encode", {"texts": rng.sample(texts, rng.randint(1, 8))})
            elif op == "search":
                call = ("/collections/soak/search", {"query": rng.choice(texts), "k": 10, "include_text": False})
            elif op == "add":
                ids = [f"c{k}-{n + i}" for i in range(4)]
                n += 4
                call = ("/collections/soak/add", {"ids": ids, "texts": rng.sample(texts, 4)})
            else:
                gone = [mine.pop(rng.randrange(len(mine))) for _ in range(min(4, len(mine)))]
                call = ("/collections/soak/delete", {"ids": gone})
            start = time.monotonic()
            response = None
            try:
                response = http.post(call[0], json=call[1])
                status = response.status_code
            except httpx.HTTPError:
                status = -1
            end = time.monotonic()
            log.add((end - t0, op, end - start, status), response)
            if op == "add" and status == 200:
                mine += call[1]["ids"]


def sampler(pid: int, deadline: float, t0: float, every: float, samples: list):
    def ours():  # the server's CPU and this benchmark's own (its clients)
        return process_cpu_seconds(pid) + process_cpu_seconds(os.getpid())

    busy, own = _machine_busy_seconds(), ours()
    while True:
        time.sleep(every)
        b, o = _machine_busy_seconds(), ours()
        samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": round(rss_mb(pid), 1),
                        "server_and_clients_cpu_s": round(o - own, 2),
                        "other_cpu_s": round(max(0.0, (b - busy) - (o - own)), 2)})
        busy, own = b, o
        if time.monotonic() >= deadline:
            return


def windows(rows, samples, width: float) -> list[dict]:
    out = []
    end = max(r[0] for r in rows)
    for lo in np.arange(0, end, width):
        part = [r for r in rows if lo <= r[0] < lo + width]
        if not part:
            continue
        lat = np.array([r[2] for r in part]) * 1000
        other = sum(s["other_cpu_s"] for s in samples if lo < s["t"] <= lo + width)
        out.append({"t_end_s": round(float(lo + width), 1), "requests": len(part),
                    "errors": sum(1 for r in part if not 200 <= r[3] < 300),
                    "p50_ms": round(float(np.percentile(lat, 50)), 1),
                    "p99_ms": round(float(np.percentile(lat, 99)), 1), "other_cpu_s": round(other, 1)})
    return out


def summarize(rows, samples, minutes, clients, width) -> dict:
    lat = np.array([r[2] for r in rows]) * 1000
    per_op = {}
    for op in MIX:
        mine = [r for r in rows if r[1] == op]
        if mine:
            ms = np.array([r[2] for r in mine]) * 1000
            per_op[op] = {"requests": len(mine), "errors": sum(1 for r in mine if not 200 <= r[3] < 300),
                          "p50_ms": round(float(np.percentile(ms, 50)), 1),
                          "p99_ms": round(float(np.percentile(ms, 99)), 1)}
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r[3])] = statuses.get(str(r[3]), 0) + 1
    rss = [(s["t"], s["rss_mb"]) for s in samples]
    half = [x for x in rss if x[0] >= rss[-1][0] / 2]
    slope = float(np.polyfit([t / 60 for t, _ in half], [m for _, m in half], 1)[0]) if len(half) >= 3 else None
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": minutes, "clients": clients,
            "mix": MIX, "requests": len(rows), "errors": sum(v for k, v in statuses.items() if not k.startswith("2")),
            "statuses": statuses, "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "per_operation": per_op,
            "rss_mb": {"start": rss[0][1], "end": rss[-1][1], "max": max(m for _, m in rss),
                       "slope_second_half_mb_per_min": None if slope is None else round(slope, 2)},
            "other_cpu_s_total": round(sum(s["other_cpu_s"] for s in samples), 1),
            "cpus": os.cpu_count(), "windows": windows(rows, samples, width), "rss_samples": samples}


def plot(summary: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = summary["windows"]
    t = [x["t_end_s"] / 60 for x in w]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(t, [x["requests"] for x in w], label="requests")
    axes[0].plot(t, [x["errors"] for x in w], label="errors")
    axes[0].set_ylabel("per window")
    axes[0].legend()
    axes[1].plot(t, [x["p50_ms"] for x in w], label="p50")
    axes[1].plot(t, [x["p99_ms"] for x in w], label="p99")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_yscale("log")
    axes[1].legend()
    s = summary["rss_samples"]
    axes[2].plot([x["t"] / 60 for x in s], [x["rss_mb"] for x in s], label="server RSS (MB)")
    axes[2].set_ylabel("RSS (MB)")
    other = axes[2].twinx()
    other.bar([x["t"] / 60 for x in s], [x["other_cpu_s"] for x in s], width=4 / 60, alpha=0.3, color="grey")
    other.set_ylabel("other processes' CPU s", color="grey")
    axes[2].set_xlabel("minutes")
    fig.suptitle(f"soak: {summary['clients']} clients, {summary['requests']} requests, "
                 f"{summary['errors']} errors\n{summary['date']}, {summary['cpus']} CPUs; other processes used "
                 f"{summary['other_cpu_s_total']:.1f} CPU s in all")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--window", type=float, default=30.0, help="seconds per latency window")
    ap.add_argument("--seed-items", type=int, default=500, help="items in the collection before the clients start")
    ap.add_argument("--out", default="benchmarks/results/soak", help="writes OUT.json, OUT.png and OUT.log")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the server (MALLOC_ARENA_MAX=2, ...); repeatable")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server_env = dict(kv.split("=", 1) for kv in args.server_env)

    import httpx

    from bertserve.serve.process import ServerProcess

    texts = corpus(4000)
    with tempfile.TemporaryDirectory(prefix="bertserve-soak-") as data:
        srv = ServerProcess("--data-dir", data, log_path=out.with_suffix(".log"), env=server_env)
        try:
            with httpx.Client(base_url=srv.url, timeout=300) as http:
                http.post("/collections", json={"name": "soak", "index": "Flat"}).raise_for_status()
                for i in range(0, args.seed_items, 100):
                    chunk = texts[i:i + 100]
                    http.post("/collections/soak/add", json={"ids": [f"seed{i + j}" for j in range(len(chunk))],
                                                             "texts": chunk}).raise_for_status()
            log, samples = Log(), []
            t0 = time.monotonic()
            deadline = t0 + args.minutes * 60
            threads = [threading.Thread(target=client_loop, args=(k, srv.url, texts, deadline, t0, log))
                       for k in range(args.clients)]
            threads.append(threading.Thread(target=sampler, args=(srv.proc.pid, deadline, t0, 5.0, samples)))
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            # the server hands free heap back after 1 s idle: what stays is memory it holds
            time.sleep(IDLE_S)
            idle_rss = round(rss_mb(srv.proc.pid), 1)
        finally:
            code = srv.stop()
    summary = summarize(log.rows, samples, args.minutes, args.clients, args.window)
    summary["rss_mb"][f"after_{IDLE_S:.0f}s_idle"] = idle_rss
    summary["server_exit_code"] = code
    summary["server_env"] = server_env
    summary["server_log"] = str(out.with_suffix(".log"))
    summary["failures"] = explain_failures(log.failures, srv.log_text())
    summary["server_tracebacks_logged"] = len(server_tracebacks(srv.log_text()))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(summary, out.with_suffix(".png"))
    brief = {k: v for k, v in summary.items() if k not in ("windows", "rss_samples")}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
