"""kill -9 a process in the middle of a large ingest: every acknowledged item must be there on reopen."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bertserve.search import Collection

DIM, BATCH = 16, 2000

WRITER = textwrap.dedent(f"""
    import sys
    import numpy as np
    from bertserve.search import Collection
    col = Collection.create(sys.argv[1], dim={DIM}, index=sys.argv[2], metric="l2")
    b = 0
    while True:
        vecs = np.random.default_rng(b).standard_normal(({BATCH}, {DIM})).astype("float32")
        col.add(vectors=vecs, ids=[f"b{{b}}-{{i}}" for i in range({BATCH})], metadata=[{{"batch": b}}] * {BATCH})
        print("ACK", b, flush=True)
        if b % 4 == 3:
            col.flush()  # a snapshot in the middle, so reopening replays only what came after it
        b += 1
""")


def kill_writer_after(script: str, args: list[str], acks: int) -> list[int]:
    """Run a writer that prints "ACK <n>" after each durable add; SIGKILL it once `acks` came in, at a
    varying point of its next add. Returns every batch it acknowledged, those printed as it died too."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env)
    acked = []
    try:
        deadline = time.time() + 90
        while len(acked) < acks and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line.split()[1]))
        time.sleep(0.05 * (len(acked) % 3))  # land the kill at varying points of the next add
        proc.send_signal(signal.SIGKILL)
        # whatever the writer printed before dying was acknowledged too
        acked += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("ACK")]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


def batch(b):
    return np.random.default_rng(b).standard_normal((BATCH, DIM)).astype("float32")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_sigkill_mid_ingest_keeps_every_acknowledged_item(tmp_path, factory):
    path = tmp_path / "c"
    acked = kill_writer_after(WRITER, [str(path), factory], acks=10)
    assert len(acked) >= 10, "writer did not get going"
    with Collection.open(path) as col:
        n = len(col)
        assert n >= len(acked) * BATCH
        assert n % BATCH == 0  # an add is one transaction: a batch is all there or not at all
        for b in range(n // BATCH):
            items = col.get([f"b{b}-{i}" for i in range(0, BATCH, 97)])
            assert all(it is not None for it in items), b
            assert np.array_equal(np.stack([it.vector for it in items]), batch(b)[::97])
            assert items[0].metadata == {"batch": b}
        # the index agrees with the store: each item is found when searched for with its own vector
        for b in (acked[0], acked[len(acked) // 2], acked[-1]):
            hits = col.search(batch(b)[:20], k=10, params={"efSearch": 200}, include_text=False)
            assert all(f"b{b}-{i}" in [h.id for h in row] for i, row in enumerate(hits))
