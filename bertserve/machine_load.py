"""CPU time this process and everything else on the machine used, so a disturbed measurement shows itself
(benchmark rounds, distillation reports, and the timing behind an `auto` decision), and the one speed
timer the reports share: interleaved throughput rounds plus single-text latency, each round with its load."""
from __future__ import annotations

import functools
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bertserve.errors import BadInput

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (a server under test), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sample:
    wall: float
    own_cpu: float
    others_cpu: float  # CPU seconds the rest of the machine used while we were timed


class Meter:
    """`with Meter() as m: ...` then m.sample: wall time, own CPU, other processes' CPU during the block.

    `pids` are further processes whose CPU counts as ours (a server the block talks to)."""

    def __init__(self, pids: tuple[int, ...] = ()):
        self.pids = tuple(pids)

    def _own(self) -> float:
        return _own_cpu_seconds() + sum(process_cpu_seconds(p) for p in self.pids)

    def __enter__(self):
        self._t, self._machine, self._own0 = time.perf_counter(), _machine_busy_seconds(), self._own()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t
        own = self._own() - self._own0
        self.sample = Sample(wall, own, max(0.0, _machine_busy_seconds() - self._machine - own))
        return False


def timed(fn) -> Sample:
    """Run fn() once under a Meter."""
    with Meter() as m:
        fn()
    return m.sample


def measure_speed(models: dict, texts: list, rounds: int = 3, latency_texts: int = 30) -> dict:
    """Throughput and single-text latency of each model (`models[name](texts)` does the work).

    Rounds are interleaved (every model runs once before the next round starts, and who goes first alternates),
    so a burst of load from elsewhere hits all contenders alike; each round records the CPU seconds other
    processes used. Returns name -> {"texts_per_s": [per round], "other_cpu_s": [per round],
    "latency_ms": [every single-text call], "latency_p50_ms": [per round]}."""
    if not texts:
        raise BadInput("no texts to time")
    singles = texts[:latency_texts]
    for run in models.values():  # warm-up: first calls pay for lazy initialisation
        run(texts[:8])
    names = list(models)
    out = {n: {"texts_per_s": [], "other_cpu_s": [], "latency_ms": [], "latency_p50_ms": []} for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            run, row = models[name], out[name]
            with Meter() as m:
                start = time.perf_counter()
                run(texts)
                row["texts_per_s"].append(len(texts) / (time.perf_counter() - start))
                lat = [timed(lambda t=t: run([t])).wall * 1000 for t in singles]
            row["latency_ms"] += lat
            row["latency_p50_ms"].append(statistics.median(lat) if lat else float("nan"))
            row["other_cpu_s"].append(m.sample.others_cpu)
    return out


def summarize_speed(runs: dict) -> dict:
    """measure_speed's per-round figures as the medians a report prints: name -> texts/s median and min, latency p50
    and p90 (over every single-text call; NaN where none were timed), and each round with its others' CPU."""
    def percentile(values, q):
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (
            values[0] if values else float("nan"))
    return {name: {"texts_per_s_median": statistics.median(r["texts_per_s"]), "texts_per_s_min": min(r["texts_per_s"]),
                   "latency_ms_p50": statistics.median(r["latency_ms"]) if r["latency_ms"] else float("nan"),
                   "latency_ms_p90": percentile(r["latency_ms"], 90),
                   "rounds": [{"texts_per_s": x, "other_cpu_s": o} for x, o in zip(r["texts_per_s"], r["other_cpu_s"])]}
            for name, r in runs.items()}


# the vector units speed figures depend on; the CPU's name alone does not say (a VM may hide AMX)
VECTOR_FEATURES = ("avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is no /proc)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def describe_machine() -> str:
    """The CPU model, its vector features, core count and memory, read off this machine (benchmark records
    name the machine they ran on)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except OSError:
        return f"{model}, {os.cpu_count()} cores"
    flags = cpu_flags()
    features = " ".join(f for f in VECTOR_FEATURES if f in flags) or "no AVX-512"
    amx = "" if "amx_bf16" in flags else ", no AMX"
    return f"{model} ({features}{amx}), {os.cpu_count()} cores, {mem_gib:.0f} GiB"


def run_record(size: str, overrides: dict, argv: list[str]) -> dict:
    """What every benchmark result file starts with: the size asked for, overrides, command, date and machine."""
    return {"size": size, "overrides": overrides, "command": " ".join(argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": describe_machine()}
