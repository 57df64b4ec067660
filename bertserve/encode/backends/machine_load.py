"""CPU time this process and everything else on the machine used, so a disturbed measurement shows itself
(benchmark rounds, and the timing behind an `auto` decision)."""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    """`with Meter() as m: ...` then m.sample: wall time, own CPU, other processes' CPU during the block."""

    def __enter__(self):
        self._t, self._machine, self._own = time.perf_counter(), _machine_busy_seconds(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t
        own = _own_cpu_seconds() - self._own
        self.sample = Sample(wall, own, max(0.0, _machine_busy_seconds() - self._machine - own))
        return False
