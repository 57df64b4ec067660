"""A deterministic sequence of collection writes, and a fork server that runs it in processes the fault
suite kills (tests/test_faults.py).

Step `s` of the plan is a pure function of `s` and the ids present before it, so the test replays the
same steps on a dict to know exactly what a collection must hold after any number of acknowledged steps.
Run as a script, this module is the fork server: it imports bertserve once and forks one writer per
command read from stdin (a writer killed with SIGKILL costs a fork, not a fresh interpreter).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import zlib

import numpy as np

DIM = 16
START = 400          # items added before the first step
BATCH = 40           # items a step adds, updates or deletes
OPS = ("add", "update", "delete", "compact")
FACTORIES = {"Flat": ("Flat", {}), "IVF": ("IVF4,Flat", {"nprobe": 4}), "HNSW": ("HNSW16", {"efSearch": 256})}


def vectors(tag: str, n: int) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(tag.encode())).standard_normal((n, DIM)).astype(np.float32)


def step(s: int, present: list[str]) -> tuple[str, list[str], np.ndarray | None]:
    """(operation, ids, vectors) of step s; step -1 is the initial add."""
    if s < 0:
        return "add", [f"init-{i}" for i in range(START)], vectors("init", START)
    op = OPS[s % len(OPS)]
    if op == "add":
        return op, [f"s{s}-{i}" for i in range(BATCH)], vectors(f"step{s}", BATCH)
    if op == "compact":
        return op, [], None
    pick = np.random.default_rng(s).choice(len(present), BATCH, replace=False)
    ids = [present[i] for i in sorted(pick)]
    return op, ids, vectors(f"step{s}", BATCH) if op == "update" else None


def expected(steps: int) -> dict[str, np.ndarray]:
    """id -> vector after the initial add and `steps` further steps."""
    state: dict[str, np.ndarray] = {}
    for s in range(-1, steps):
        op, ids, vecs = step(s, sorted(state))
        if op in ("add", "update"):
            state.update(zip(ids, vecs))
        elif op == "delete":
            for i in ids:
                del state[i]
    return state


def apply(col, s: int):
    op, ids, vecs = step(s, sorted(col.ids(0, 10 ** 9)))
    if op == "add":
        col.add(vectors=vecs, ids=ids)
    elif op == "update":
        col.update(ids, vectors=vecs)
    elif op == "delete":
        col.delete(ids)
    else:
        col.compact()
    if s % 8 == 0:
        col.flush()  # a snapshot now and then, so reopening also replays what came after one


def say(*words):
    print(*words, flush=True)


def writer(path: str, factory: str, file_limit: int | None):
    from bertserve.search import Collection

    spec, params = FACTORIES[factory]
    col = Collection.create(path, dim=DIM, index=spec, metric="l2", params=params)
    apply_initial = step(-1, [])
    col.add(vectors=apply_initial[2], ids=apply_initial[1])
    say("ACK", -1)
    if file_limit is not None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    s = 0
    while True:
        try:
            apply(col, s)
        except Exception as exc:  # only the full-disk writer gets here
            say("ERROR", json.dumps({"type": type(exc).__name__, "message": str(exc)}))
            hits = col.search(vectors("init", 1)[0], k=1, include_text=False)
            say("SEARCH", hits[0].id)
            return
        say("ACK", s)
        s += 1


def serve():
    """Fork server: each stdin line is a JSON command {"path", "factory", "file_limit"}."""
    import bertserve.search  # noqa: F401  the one slow import, shared by every writer

    for line in sys.stdin:
        cmd = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                import faiss

                faiss.omp_set_num_threads(1)
                writer(cmd["path"], cmd["factory"], cmd.get("file_limit"))
            except BaseException as exc:
                say("CRASH", repr(exc))
                code = 1
            finally:
                os._exit(code)
        say("CHILD", pid)
        _, status = os.waitpid(pid, 0)
        say("EXIT", pid, status)


if __name__ == "__main__":
    serve()
