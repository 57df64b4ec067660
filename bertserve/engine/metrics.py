"""Request and batch statistics shared by both front-ends, rendered as Prometheus text and as a status dict.

Written by hand instead of pulling in prometheus_client: a few counters and two histograms are all the
server needs, and the exposition format is plain text.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATE_WINDOW_S = 30.0


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        lines, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts):
            running += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{braces} {self.sum:.6f}")
        lines.append(f"{name}_count{braces} {self.count}")
        return lines


class Metrics:
    """Thread-safe counters; `queue_depth` is a callable so the gauge is read live from the batcher."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests = Counter()        # (protocol, endpoint) -> n
        self.errors = Counter()          # (protocol, error type) -> n
        self.latency = {}                # (protocol, endpoint) -> Histogram
        self.texts_total = 0
        self.tokens_total = 0
        self.batches = Histogram(BATCH_TEXT_BUCKETS)
        self.encode_seconds_total = 0.0
        self.clients = set()             # ZeroMQ identities seen, as bert-as-service's status reports
        self._recent_tokens = deque()    # (time, tokens) for the tokens/s gauge
        self.queue_depth = lambda: 0

    def observe_request(self, protocol: str, endpoint: str, seconds: float):
        with self._lock:
            self.requests[(protocol, endpoint)] += 1
            self.latency.setdefault((protocol, endpoint), Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_error(self, protocol: str, error_type: str):
        with self._lock:
            self.errors[(protocol, error_type)] += 1

    def observe_batch(self, texts: int, tokens: int, seconds: float):
        now = time.monotonic()
        with self._lock:
            self.batches.observe(texts)
            self.texts_total += texts
            self.tokens_total += tokens
            self.encode_seconds_total += seconds
            self._recent_tokens.append((now, tokens))
            self._trim(now)

    def observe_client(self, identity: bytes):
        with self._lock:
            self.clients.add(identity)

    def _trim(self, now):
        while self._recent_tokens and now - self._recent_tokens[0][0] > RATE_WINDOW_S:
            self._recent_tokens.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._recent_tokens)
        return total / min(RATE_WINDOW_S, max(1e-9, time.time() - self.started))

    def snapshot(self) -> dict:
        with self._lock:
            by_endpoint = {f"{p}:{e}": n for (p, e), n in sorted(self.requests.items())}
            errors = {f"{p}:{t}": n for (p, t), n in sorted(self.errors.items())}
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "num_request": sum(self.requests.values()),
                "requests": by_endpoint,
                "errors": errors,
                "num_total_seq": self.texts_total,
                "num_total_tokens": self.tokens_total,
                "num_batches": self.batches.count,
                "avg_batch_texts": round(self.batches.sum / self.batches.count, 3) if self.batches.count else 0.0,
                "encode_seconds_total": round(self.encode_seconds_total, 3),
                "num_active_client": len(self.clients),
                "queue_depth": self.queue_depth(),
            }

    def render(self) -> str:
        tps = self.tokens_per_second()
        depth = self.queue_depth()
        with self._lock:
            out = ["# HELP bertserve_requests_total Requests served, by protocol and endpoint.",
                   "# TYPE bertserve_requests_total counter"]
            out += [f'bertserve_requests_total{{protocol="{p}",endpoint="{e}"}} {n}'
                    for (p, e), n in sorted(self.requests.items())]
            out += ["# HELP bertserve_errors_total Requests answered with an error, by protocol and type.",
                    "# TYPE bertserve_errors_total counter"]
            out += [f'bertserve_errors_total{{protocol="{p}",type="{t}"}} {n}'
                    for (p, t), n in sorted(self.errors.items())]
            out += ["# HELP bertserve_request_seconds Request latency from arrival to reply.",
                    "# TYPE bertserve_request_seconds histogram"]
            for (protocol, endpoint), hist in sorted(self.latency.items()):
                out += hist.render("bertserve_request_seconds", f'protocol="{protocol}",endpoint="{endpoint}"')
            out += ["# HELP bertserve_batch_texts Texts per encoder batch.",
                    "# TYPE bertserve_batch_texts histogram"]
            out += self.batches.render("bertserve_batch_texts")
            out += ["# HELP bertserve_texts_total Texts encoded.", "# TYPE bertserve_texts_total counter",
                    f"bertserve_texts_total {self.texts_total}",
                    "# HELP bertserve_tokens_total Tokens encoded.", "# TYPE bertserve_tokens_total counter",
                    f"bertserve_tokens_total {self.tokens_total}",
                    f"# HELP bertserve_tokens_per_second Tokens encoded per second over the last {RATE_WINDOW_S:g} s.",
                    "# TYPE bertserve_tokens_per_second gauge", f"bertserve_tokens_per_second {tps:.3f}",
                    "# HELP bertserve_queue_texts Texts accepted and not yet encoded.",
                    "# TYPE bertserve_queue_texts gauge", f"bertserve_queue_texts {depth}",
                    "# HELP bertserve_uptime_seconds Seconds since start.", "# TYPE bertserve_uptime_seconds gauge",
                    f"bertserve_uptime_seconds {time.time() - self.started:.3f}"]
        return "\n".join(out) + "\n"
