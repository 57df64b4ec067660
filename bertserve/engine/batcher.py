"""The one batcher: it serves any Engine (bertserve.engine.contract), and every front-end's call ends here.

A request is prepared (checked and tokenized) once, on one of two tokenizer lanes: requests with little text
go to the quick lane and large ones to the bulk lane, so a request carrying megabytes of text never delays a
one-sentence request behind its tokenization. Its items then wait in a job list. Each worker builds a batch
bounded by a token budget: the oldest job gets up to half of the budget, so a huge request always makes
progress, and the rest goes to the jobs with the fewest tokens left, so a one-sentence request overtakes a
10,000-sentence one instead of waiting behind it. A request larger than the budget is split across batches.
Rows are put back in each job's own order, and when a job's last row arrives the engine's `finish` turns its
rows into the answer its future resolves to.

There is no waiting timer: a batch starts as soon as a worker is free, and concurrent requests merge because
they pile up while the workers are busy. The queue is bounded in inputs; past the bound `submit` refuses at
once (Overloaded) rather than letting memory grow.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import queue
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError

from bertserve.engine.contract import Engine
from bertserve.errors import (
    BadInput,
    BadInputType,
    Internal,
    Overloaded,
    TooLarge,
    Unavailable,
)

log = logging.getLogger("bertserve.engine")

# After a burst, glibc keeps the freed activation buffers in its heap (its mmap threshold grows after big
# frees), which left the server about 200 MB above its start-up size. Handing free pages back once the
# workers have been idle this long costs nothing under load; a fixed low mmap threshold instead cost ~18%
# CPU (benchmarked here).
IDLE_TRIM_S = 1.0
# Under load that never pauses for IDLE_TRIM_S (a soak of 16 clients) the heap grew by ~900 MB in three
# minutes and came back only when the clients stopped; trimming at most this often while busy bounds it.
# One trim walks the free lists of every arena: milliseconds, every BUSY_TRIM_S seconds.
BUSY_TRIM_S = 10.0
# Requests with more characters than this are prepared on the bulk lane (a few ms of tokenizing at most
# stays on the quick lane).
QUICK_LANE_CHARS = 20_000

# The names the serve layer used before errors had one hierarchy; kept so callers' except clauses still work.
QueueFull = Overloaded
ServerClosing = Unavailable
RequestTooLarge = TooLarge


class _Job:
    __slots__ = ("inputs", "options", "future", "prepared", "items", "next", "left", "rows", "pending_tokens",
                 "failed", "reserved", "arrived")

    def __init__(self, inputs, options, reserved):
        self.inputs = inputs
        self.options = options
        self.future = Future()
        self.prepared = None
        self.items = None
        self.next = 0              # first item not yet handed to a worker
        self.left = 0              # items whose rows have not come back
        self.rows = None
        self.pending_tokens = 0    # tokens of the items not yet handed to a worker
        self.failed = False
        self.reserved = reserved   # queue places this job holds until it is answered
        self.arrived = time.perf_counter()


class Batcher:
    def __init__(self, engine: Engine, *, max_batch_tokens=4096, max_queue_texts=16384, max_request_texts=4096,
                 num_worker=1, metrics=None, label: str | None = None):
        self.engine = engine
        # the metrics label: the engine's kind, or e.g. "encode:zh" for a second encode model of one server
        self.kind = label or getattr(engine, "kind", type(engine).__name__.lower())
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_texts = max_queue_texts
        self.max_request_texts = max_request_texts
        self.metrics = metrics
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []        # prepared jobs with items not yet handed out, oldest first
        self._queued = 0                   # inputs accepted and not yet answered
        self._closing = False
        self._stopping = False
        self._worked_since_trim = False
        self._last_trim = time.monotonic()
        self._lanes = {"quick": queue.SimpleQueue(), "bulk": queue.SimpleQueue()}
        self._threads = [threading.Thread(target=self._prepare_loop, args=(q,), name=f"bertserve-{lane}-prepare",
                                          daemon=True) for lane, q in self._lanes.items()]
        self._threads += [threading.Thread(target=self._worker_loop, name=f"bertserve-worker-{i}", daemon=True)
                          for i in range(num_worker)]
        for t in self._threads:
            t.start()

    @property
    def encoder(self):
        """The engine, under the name in-process callers of the encode batcher know."""
        return self.engine

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_texts(self) -> int:
        return self._queued

    def submit(self, inputs, **options) -> Future:
        """Accept a request or refuse it at once; the Future resolves to `engine.finish(...)` or raises."""
        if not isinstance(inputs, list):
            raise BadInputType(f"texts must be a list, got {type(inputs).__name__}")
        if not inputs:
            raise BadInput("texts is empty: send at least one text")
        n = len(inputs)
        if n > self.max_request_texts:
            raise TooLarge(f"{n} texts in one request; this server accepts at most {self.max_request_texts} "
                           "per request (split the list)")
        with self._cond:
            if self._closing:
                raise Unavailable("server is shutting down")
            if self._queued + n > self.max_queue_texts:
                raise Overloaded(f"server queue is full ({self._queued} texts waiting, limit "
                                 f"{self.max_queue_texts}); retry later")
            self._queued += n
        job = _Job(inputs, options, n)
        self._lanes["bulk" if _size(inputs) > QUICK_LANE_CHARS else "quick"].put(job)
        return job.future

    def call(self, inputs, timeout: float | None = None, **options):
        """Blocking form, for in-process callers such as the search routes."""
        return self.submit(inputs, **options).result(timeout)

    def encode(self, texts, is_tokenized: bool = False, timeout: float | None = None):
        """`call` under the name the encode batcher's in-process callers use."""
        return self.call(texts, timeout, is_tokenized=is_tokenized)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new work, let accepted work finish (up to `timeout` s), then stop the threads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closing = True
            while self._queued:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            drained = self._queued == 0
            self._stopping = True
            self._cond.notify_all()
        for q in self._lanes.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=5)
        return drained

    # ---- threads ----

    def _prepare_loop(self, lane: queue.SimpleQueue):
        while (job := lane.get()) is not None:
            try:
                prepared = self.engine.prepare(job.inputs, **job.options)
            except Exception as e:  # the caller's bad input (or a bug, which the front-end reports as one)
                self._done(job, error=e)
                continue
            job.prepared, job.items = prepared, prepared.items
            if not job.items:
                self._finish(job)
                continue
            job.rows = [None] * len(job.items)
            job.left = len(job.items)
            job.pending_tokens = sum(it.num_tokens for it in job.items)
            with self._cond:
                self._jobs.append(job)
                self._cond.notify()

    def _worker_loop(self):
        while True:
            batch = None
            with self._cond:
                while not self._jobs and not self._stopping:
                    if not self._cond.wait(IDLE_TRIM_S) and self._worked_since_trim:
                        self._worked_since_trim = False
                        break
                else:
                    if not self._jobs:
                        return
                    batch = self._take_batch()
                    self._worked_since_trim = True
            if batch is not None:
                self._run(batch)
            if batch is None or time.monotonic() - self._last_trim > BUSY_TRIM_S:
                _release_free_memory()
                self._last_trim = time.monotonic()

    def _take_batch(self) -> list[tuple[_Job, int]]:
        picked: list[tuple[_Job, int]] = []
        oldest = self._jobs[0]
        used = _take(oldest, self.max_batch_tokens // 2, picked)
        for job in sorted(self._jobs[1:], key=lambda j: j.pending_tokens):
            if used >= self.max_batch_tokens:
                break
            used += _take(job, self.max_batch_tokens - used, picked)
        if used < self.max_batch_tokens:
            _take(oldest, self.max_batch_tokens - used, picked)
        self._jobs = [j for j in self._jobs if j.next < len(j.items)]
        return picked

    def _run(self, batch):
        items = [job.items[i] for job, i in batch]
        t0 = time.perf_counter()
        error = None
        try:
            rows = self.engine.run(items)
            if len(rows) != len(items):
                raise Internal(f"{self.kind} engine returned {len(rows)} rows for {len(items)} items")
        except Exception as e:
            # input was checked when prepared, so a failure here is the server's, not the caller's
            log.exception("%s engine failed on a batch of %d items", self.kind, len(items))
            rows, error = None, Internal(f"{self.kind} engine failed on a batch: {e!r}")
        if self.metrics is not None and error is None:
            self.metrics.observe_batch(self.kind, len(items), sum(it.num_tokens for it in items),
                                       time.perf_counter() - t0)
        finished, failed = [], []
        with self._cond:
            for k, (job, i) in enumerate(batch):
                if error is not None:
                    if not job.failed:
                        job.failed = True
                        failed.append(job)
                else:
                    job.rows[i] = rows[k]
                job.left -= 1
                if job.left == 0 and not job.failed:
                    finished.append(job)
        for job in failed:
            self._done(job, error=error)
        for job in finished:
            self._finish(job)

    def _finish(self, job: _Job):
        try:
            result = self.engine.finish(job.prepared, job.rows or [])
        except Exception as e:
            log.exception("%s engine failed to finish a request", self.kind)
            self._done(job, error=e)
            return
        self._done(job, result=result)

    def _done(self, job: _Job, result=None, error=None):
        """Answer a job (once) and give its queue places back."""
        with self._cond:
            self._queued -= job.reserved
            job.reserved = 0
            self._cond.notify_all()
        if self.metrics is not None:
            self.metrics.observe_engine_request(self.kind, time.perf_counter() - job.arrived, error is not None)
        _resolve(job.future, result, error)


class BatchedEncoder:
    """An Encoder look-alike (`encode`, `dim`, `config`) whose calls go through the batcher, for in-process
    users such as search collections; long lists are sent in pieces the batcher accepts."""

    def __init__(self, batcher: Batcher):
        import numpy as np

        self._np = np
        self.batcher = batcher
        self.dim = batcher.engine.dim
        self.config = batcher.engine.config

    def __getattr__(self, name):  # checkpoint, fingerprint, ...: whatever the encoder itself offers
        return getattr(self.batcher.engine, name)

    def encode(self, texts, is_tokenized: bool = False, **options):
        texts = list(texts)
        step = self.batcher.max_request_texts
        parts = [self.batcher.call(texts[i:i + step], is_tokenized=is_tokenized, **options).vectors
                 for i in range(0, len(texts), step)]
        if len(parts) == 1:
            return parts[0]
        return self._np.concatenate(parts) if parts else self.batcher.engine.encode([])


def _size(inputs: list) -> int:
    """Characters a request carries: what its preparation costs, roughly."""
    total = 0
    for x in inputs:
        if isinstance(x, str):
            total += len(x)
        elif isinstance(x, (list, tuple)):
            total += sum(len(w) if isinstance(w, str) else 1 for w in x)
        else:
            total += 1
    return total


def _take(job: _Job, budget: int, picked: list) -> int:
    """Hand out the job's next items while they fit in `budget` tokens (at least one if the batch is empty)."""
    used = 0
    while job.next < len(job.items):
        n = job.items[job.next].num_tokens
        if used + n > budget and (used or picked):
            break
        picked.append((job, job.next))
        job.next += 1
        job.pending_tokens -= n
        used += n
    return used


def _release_free_memory():
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has no malloc_trim
    except OSError:
        return None


def _resolve(future: Future, result=None, error=None):
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled by the caller meanwhile
        pass
