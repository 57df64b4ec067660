"""Request, engine and batch statistics, exposed in Prometheus' text format (prometheus_client) and as the
status dict bert-as-service's clients read (`num_total_seq`, `num_active_client`, ...).

Each server owns its own registry, so several servers in one process (tests, notebooks) keep apart. Front-ends
count requests by protocol and endpoint; batchers count what each engine did, labelled with its kind.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATE_WINDOW_S = 30.0
# a ZeroMQ client counts as active this long after its last message; every new connection brings a new
# identity, so the table forgets the silent ones (and never holds more than MAX_CLIENTS) instead of growing
# for the server's whole life
ACTIVE_CLIENT_S = 600.0
MAX_CLIENTS = 10_000

disable_created_metrics()  # the *_created series double the output and no dashboard here reads them


class _Tally:
    """One engine's running totals for /status (Prometheus keeps its own copies for /metrics)."""

    __slots__ = ("requests", "errors", "items", "tokens", "batches", "seconds", "recent")

    def __init__(self):
        self.requests = self.errors = self.items = self.tokens = self.batches = 0
        self.seconds = 0.0
        self.recent = deque()  # (monotonic time, tokens) for tokens/s over the last RATE_WINDOW_S


class Metrics:
    """Thread-safe; `queue_depth` is a callable so the gauge is read live from the batchers."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.started = time.time()
        self._lock = threading.Lock()
        self._engines: dict[str, _Tally] = defaultdict(_Tally)
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self.clients: dict[bytes, float] = {}  # ZeroMQ identity -> last seen (monotonic), oldest first
        self.queue_depth = lambda: 0
        r = self.registry
        self._m_requests = Counter("bertserve_requests", "Requests served, by protocol and endpoint.",
                                   ("protocol", "endpoint"), registry=r)
        self._m_errors = Counter("bertserve_errors", "Requests answered with an error, by protocol and type.",
                                 ("protocol", "type"), registry=r)
        self._m_latency = Histogram("bertserve_request_seconds", "Request latency from arrival to reply.",
                                    ("protocol", "endpoint"), buckets=LATENCY_BUCKETS, registry=r)
        self._m_engine_requests = Counter("bertserve_engine_requests", "Requests each engine finished.",
                                          ("engine", "outcome"), registry=r)
        self._m_engine_latency = Histogram("bertserve_engine_request_seconds",
                                           "Time from a request's arrival at an engine's batcher to its answer.",
                                           ("engine",), buckets=LATENCY_BUCKETS, registry=r)
        self._m_batch = Histogram("bertserve_batch_texts", "Items (texts, windows, sentences) per batch.",
                                  ("engine",), buckets=BATCH_ITEM_BUCKETS, registry=r)
        self._m_items = Counter("bertserve_texts", "Items each engine ran.", ("engine",), registry=r)
        self._m_tokens = Counter("bertserve_tokens", "Tokens each engine ran.", ("engine",), registry=r)
        self._m_busy = Counter("bertserve_engine_busy_seconds", "Seconds each engine spent running batches.",
                               ("engine",), registry=r)
        Gauge("bertserve_queue_texts", "Texts accepted and not yet answered, all engines.",
              registry=r).set_function(lambda: self.queue_depth())
        Gauge("bertserve_uptime_seconds", "Seconds since start.",
              registry=r).set_function(lambda: time.time() - self.started)
        self._m_tps = Gauge("bertserve_tokens_per_second",
                            f"Tokens run per second over the last {RATE_WINDOW_S:g} s.", ("engine",), registry=r)

    # -- front-ends -----------------------------------------------------------------------------------
    def observe_request(self, protocol: str, endpoint: str, seconds: float):
        self._m_requests.labels(protocol, endpoint).inc()
        self._m_latency.labels(protocol, endpoint).observe(seconds)
        with self._lock:
            self._requests[(protocol, endpoint)] += 1

    def observe_error(self, protocol: str, error_type: str):
        self._m_errors.labels(protocol, error_type).inc()
        with self._lock:
            self._errors[(protocol, error_type)] += 1

    def observe_client(self, identity: bytes):
        now = time.monotonic()
        with self._lock:
            self.clients.pop(identity, None)  # re-inserted last: the dict stays ordered by last message
            self.clients[identity] = now
            if len(self.clients) > MAX_CLIENTS:
                self._forget_clients(now)

    def _forget_clients(self, now: float):
        """Drop identities silent for ACTIVE_CLIENT_S, and the oldest beyond MAX_CLIENTS (lock held)."""
        for identity, seen in list(self.clients.items()):
            if now - seen <= ACTIVE_CLIENT_S and len(self.clients) <= MAX_CLIENTS:
                break
            del self.clients[identity]

    def active_clients(self) -> int:
        with self._lock:
            self._forget_clients(time.monotonic())
            return len(self.clients)

    # -- batchers -------------------------------------------------------------------------------------
    def observe_batch(self, engine: str, items: int, tokens: int, seconds: float):
        self._m_batch.labels(engine).observe(items)
        self._m_items.labels(engine).inc(items)
        self._m_tokens.labels(engine).inc(tokens)
        self._m_busy.labels(engine).inc(seconds)
        now = time.monotonic()
        with self._lock:
            t = self._engines[engine]
            t.batches += 1
            t.items += items
            t.tokens += tokens
            t.seconds += seconds
            t.recent.append((now, tokens))
            _trim(t.recent, now)
            first = t.batches == 1
        if first:
            self._m_tps.labels(engine).set_function(lambda: self.tokens_per_second(engine))

    def observe_engine_request(self, engine: str, seconds: float, failed: bool):
        self._m_engine_requests.labels(engine, "error" if failed else "ok").inc()
        self._m_engine_latency.labels(engine).observe(seconds)
        with self._lock:
            t = self._engines[engine]
            t.requests += 1
            t.errors += bool(failed)

    def tokens_per_second(self, engine: str) -> float:
        now = time.monotonic()
        with self._lock:
            recent = self._engines[engine].recent
            _trim(recent, now)
            total = sum(n for _, n in recent)
        return total / min(RATE_WINDOW_S, max(1e-9, time.time() - self.started))

    # -- reports --------------------------------------------------------------------------------------
    def engine_stats(self) -> dict[str, dict]:
        with self._lock:
            engines = {name: (t.requests, t.errors, t.items, t.tokens, t.batches, t.seconds)
                       for name, t in sorted(self._engines.items())}
        return {name: {"requests": r, "errors": e, "items": i, "tokens": k, "batches": b,
                       "busy_seconds": round(s, 3), "avg_batch_items": round(i / b, 3) if b else 0.0,
                       "tokens_per_second": round(self.tokens_per_second(name), 3)}
                for name, (r, e, i, k, b, s) in engines.items()}

    def snapshot(self, main_engine: str = "encode") -> dict:
        """bert-as-service's statistics (its names, for the main encode engine) plus every engine's own."""
        engines = self.engine_stats()
        main = engines.get(main_engine, {})
        with self._lock:
            by_endpoint = {f"{p}:{e}": n for (p, e), n in sorted(self._requests.items())}
            errors = {f"{p}:{t}": n for (p, t), n in sorted(self._errors.items())}
        clients = self.active_clients()
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "num_request": sum(by_endpoint.values()),
            "requests": by_endpoint,
            "errors": errors,
            "num_total_seq": main.get("items", 0),
            "num_total_tokens": main.get("tokens", 0),
            "num_batches": main.get("batches", 0),
            "avg_batch_texts": main.get("avg_batch_items", 0.0),
            "encode_seconds_total": main.get("busy_seconds", 0.0),
            "num_active_client": clients,
            "queue_depth": self.queue_depth(),
            "engines": engines,
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _trim(recent: deque, now: float):
    while recent and now - recent[0][0] > RATE_WINDOW_S:
        recent.popleft()
