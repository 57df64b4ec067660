"""The one batcher: every front-end's encode call ends here.

A request is tokenized once (on a single tokenizer thread, so the HF fast tokenizer is never used from two
threads at once), then its items wait in a job list. Each worker builds a batch bounded by a token budget:
the oldest job gets up to half of the budget, so a huge request always makes progress, and the rest goes to
the jobs with the fewest tokens left, so a one-sentence request overtakes a 10,000-sentence one instead of
waiting behind it. A request larger than the budget is split across batches. Rows are put back in each
job's own order, and a job's future resolves when its last row arrives.

There is no waiting timer: a batch starts as soon as a worker is free, and concurrent requests merge
because they pile up while the workers are busy. The queue is bounded in texts; past the bound `submit`
refuses at once (QueueFull) rather than letting memory grow.
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
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("bertserve.serve")

# After a burst, glibc keeps the freed activation buffers in its heap (its mmap threshold grows after big
# frees), which left the server about 200 MB above its start-up size. Handing free pages back once the
# workers have been idle this long costs nothing under load; a fixed low mmap threshold instead cost ~18%
# CPU (benchmarked here).
IDLE_TRIM_S = 1.0


class QueueFull(RuntimeError):
    """The server holds as many texts as it may; the caller should retry later (HTTP 429)."""


class ServerClosing(RuntimeError):
    """The server is shutting down and takes no new work (HTTP 503)."""


class RequestTooLarge(ValueError):
    """One request carries more texts than the server accepts per request (HTTP 413)."""


@dataclass
class Encoded:
    vectors: np.ndarray            # (n, dim), or (n, L, dim) for pooling NONE
    tokens: list[list[str]]        # the tokens each text became (only when asked for; else empty)
    num_tokens: int                # total tokens, for OpenAI's `usage`


class _Job:
    __slots__ = ("texts", "is_tokenized", "show_tokens", "options", "future", "items", "tokens", "next", "left",
                 "rows", "pending_tokens", "failed")

    def __init__(self, texts, is_tokenized, show_tokens, options):
        self.texts = texts
        self.is_tokenized = is_tokenized
        self.show_tokens = show_tokens
        self.options = options  # the encoder's tokenize options: prompt, variant (one request's own settings)
        self.tokens = []
        self.future = Future()
        self.items = None
        self.next = 0              # first item not yet handed to a worker
        self.left = len(texts)     # items whose vectors have not come back
        self.rows = [None] * len(texts)
        self.pending_tokens = 0    # tokens of the items not yet handed to a worker
        self.failed = False


class Batcher:
    def __init__(self, encoder, *, max_batch_tokens=4096, max_queue_texts=16384, max_request_texts=4096,
                 num_worker=1, metrics=None):
        self.encoder = encoder
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_texts = max_queue_texts
        self.max_request_texts = max_request_texts
        self.metrics = metrics
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []        # tokenized jobs with items not yet handed out, oldest first
        self._queued = 0                   # texts accepted and not yet answered
        self._closing = False
        self._stopping = False
        self._worked_since_trim = False
        self._to_tokenize: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._tokenize_loop, name="bertserve-tokenizer", daemon=True)]
        self._threads += [threading.Thread(target=self._worker_loop, name=f"bertserve-worker-{i}", daemon=True)
                          for i in range(num_worker)]
        for t in self._threads:
            t.start()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_texts(self) -> int:
        return self._queued

    def submit(self, texts, is_tokenized: bool = False, show_tokens: bool = False, **options) -> Future:
        """Accept a request or refuse it at once; the Future resolves to an Encoded or raises the error.
        `options` go to the encoder's tokenize (prompt=, variant=: requests with different ones share batches)."""
        if not isinstance(texts, list):
            raise TypeError(f"texts must be a list of {'token lists' if is_tokenized else 'strings'}, "
                            f"got {type(texts).__name__}")
        if not texts:
            raise ValueError("texts is empty: send at least one text")
        n = len(texts)
        if n > self.max_request_texts:
            raise RequestTooLarge(f"{n} texts in one request; this server accepts at most "
                                  f"{self.max_request_texts} per request (split the list)")
        with self._cond:
            if self._closing:
                raise ServerClosing("server is shutting down")
            if self._queued + n > self.max_queue_texts:
                raise QueueFull(f"server queue is full ({self._queued} texts waiting, limit "
                                f"{self.max_queue_texts}); retry later")
            self._queued += n
        job = _Job(texts, is_tokenized, show_tokens, options)
        self._to_tokenize.put(job)
        return job.future

    def encode(self, texts, is_tokenized: bool = False, timeout: float | None = None) -> Encoded:
        """Blocking form, for in-process callers such as the search routes."""
        return self.submit(texts, is_tokenized).result(timeout)

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
        self._to_tokenize.put(None)
        for t in self._threads:
            t.join(timeout=5)
        return drained

    # ---- threads ----

    def _tokenize_loop(self):
        while (job := self._to_tokenize.get()) is not None:
            try:
                items = self.encoder.tokenize(job.texts, is_tokenized=job.is_tokenized, **job.options)
                if job.show_tokens:
                    tokenizer = getattr(job.options.get("variant"), "tokenizer", None) or self.encoder.tokenizer
                    job.tokens = [tokenizer.tokens(it) for it in items]
            except Exception as e:  # the caller's bad input: it gets the error, the server goes on
                self._release(len(job.texts))
                _resolve(job.future, error=e)
                continue
            job.items = items
            job.pending_tokens = sum(it.num_tokens for it in items)
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
            if batch is None:
                _release_free_memory()
            else:
                self._run(batch)

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
        try:
            vectors = self.encoder.embed(items)
        except Exception as e:
            # input was checked when tokenized, so a failure here is the server's, not the caller's
            log.exception("encoder failed on a batch of %d texts", len(items))
            vectors, error = None, RuntimeError(f"encoder failed on a batch: {e!r}")
        if self.metrics is not None and vectors is not None:
            self.metrics.observe_batch(len(items), sum(it.num_tokens for it in items), time.perf_counter() - t0)
        done = []
        with self._cond:
            for k, (job, i) in enumerate(batch):
                if vectors is None:
                    if not job.failed:
                        job.failed = True
                        done.append((job, error))
                else:
                    job.rows[i] = vectors[k]
                job.left -= 1
                if job.left == 0 and not job.failed:
                    done.append((job, None))
            self._queued -= len(batch)
            self._cond.notify_all()
        for job, error in done:
            if error is not None:
                _resolve(job.future, error=error)
            else:
                _resolve(job.future, result=_assemble(job))

    def _release(self, n):
        with self._cond:
            self._queued -= n
            self._cond.notify_all()


class BatchedEncoder:
    """An Encoder look-alike (`encode`, `dim`, `config`) whose calls go through the batcher, for in-process
    users such as search collections; long lists are sent in pieces the batcher accepts."""

    def __init__(self, batcher: Batcher):
        self.batcher = batcher
        self.dim = batcher.encoder.dim
        self.config = batcher.encoder.config

    def encode(self, texts, is_tokenized: bool = False) -> np.ndarray:
        texts = list(texts)
        step = self.batcher.max_request_texts
        if len(texts) <= step:
            return self.batcher.encode(texts, is_tokenized).vectors
        return np.concatenate([self.batcher.encode(texts[i:i + step], is_tokenized).vectors
                               for i in range(0, len(texts), step)])


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


def _assemble(job: _Job) -> Encoded:
    rows = job.rows
    if rows[0].ndim == 2:
        # pooling NONE: pieces encoded in different batches may be padded to different lengths
        width = max(r.shape[0] for r in rows)
        out = np.zeros((len(rows), width, rows[0].shape[1]), dtype=rows[0].dtype)
        for k, r in enumerate(rows):
            out[k, :r.shape[0]] = r
    else:
        out = np.stack(rows)
    return Encoded(out, job.tokens, sum(it.num_tokens for it in job.items))


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
