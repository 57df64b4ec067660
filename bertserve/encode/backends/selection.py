"""`backend="auto"`: a latency backend for small batches, a throughput backend for bulk, each measured here.

What a caller needs decides: the server's small batches (one sentence, a few requests in a queue window) want
the lowest fixed cost per call, bulk `encode` wants the most sentences per second. So `auto` is a router over two
concrete backends, chosen per batch by its padded size (rows x length):

  up to LATENCY_MAX_TOKENS   latency backend: the fastest on one sentence
  above                      throughput backend: the fastest on batches of 32
  longer than SAMPLE_MAX_LEN long backend (only when an approximate one was chosen): the fastest on long texts
                             of those that pass the gate on them too

Both roles choose among the same candidates: the exact ones (torch fp32, onnx fp32, OpenVINO fp32 where the
package is installed) and the approximate ones that pass the quality gate for this model: bf16 where the CPU
computes bfloat16 natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo, detected, never assumed) and OpenVINO int8
where NNCF is installed. An approximate backend must beat the best exact one by APPROXIMATE_MARGIN to be chosen.

A CPU flag does not say what is fast: on one 2-core VM with avx512_bf16 (no AMX), bf16 ran at 0.6x torch fp32
(docs/encode.md). So the candidates are timed, in interleaved rounds (median, other processes' CPU recorded), but
nothing waits for it: the first Encoder serves at once on torch fp32 while a background thread exports the ONNX
graph (and the int8 one), checks the approximate candidates against torch fp32 on `auto_sample` real sentences
and times every candidate (one to two minutes of background work).
The decision is cached per model content, exposed layers, pooler, gate, sample and CPU (settings.cache_dir), so
later Encoders build the two chosen backends before their constructor returns. onnx-int8 is never a candidate:
on all-MiniLM-L6-v2 it fails the gate (docs/encode.md), it stays the user's explicit trade.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict

import torch

from bertserve.encode.backends import CONCRETE, EXACT, export_cache, make_backend
from bertserve.encode.backends.bf16 import native_bf16
from bertserve.encode.backends.quality import QualityGate, measure_quality
from bertserve.encode.backends.sample import english_sentences, padded_batches
from bertserve.evaluation import SampleUnavailable
from bertserve.machine_load import cpu_flags, measure_speed
from bertserve.models.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

SAMPLE_OFFSET = 400  # the first 300 sentences calibrate openvino-int8: the gate is checked on others
# 8: the long role checked on long texts and timed on them; 7: texts longer than the checked sample on an exact
# backend; 6: openvino-int8 a candidate
DECISION_FORMAT = 8
# Token limit of the checked sentences (they are short: this cuts only outliers). Batches longer than this go to
# the `long` backend when an approximate one was chosen: the gate on sentences says nothing about them, and on
# all-MiniLM-L6-v2 openvino-int8 (calibrated and checked on sentences) fell to top-10 overlap 0.940 at 256 tokens
# and 0.916 at 512 (benchmarks/encode.py, 2026-12-02 16:29 UTC), where bf16 kept 0.999 / 0.997. So the long role
# picks among the exact backends and the approximate ones that pass the gate again on LONG_CHECK_TEXTS texts of
# the model's full length (at most LONG_CHECK_MAX_LEN tokens), timed on those texts: on an AMX Xeon bf16 ran
# 512-token texts at 1.63x sentence-transformers where the fastest exact backend ran 1.07x (2026-12-02 20:10 UTC).
SAMPLE_MAX_LEN = 128
LONG_CHECK_TEXTS = 16  # the check and the timing took 38 s together on the 2-core Xeon VM
LONG_CHECK_MAX_LEN = 512
# rows per long batch: one Encoder after its first decision held 3,338 MiB with 8 rows of 512, 1,893 MiB with 2
LONG_CHECK_BATCH = 2
BATCH = 32
# A batch of at most this many padded tokens goes to the latency backend: one sentence (~10-30 tokens) or a
# server queue window of a few short requests; a bulk batch of 32 sentences is ~500-1000 tokens.
LATENCY_MAX_TOKENS = 256
# openvino: 1.76x sentence-transformers against onnx's 1.53x on the AMD EPYC VM (docs/encode.md); optional package
EXACT_CANDIDATES = ("torch", "onnx", *(("openvino",) if importlib.util.find_spec("openvino") else ()))
# openvino-int8 on all-MiniLM-L6-v2 passes the gate (cosine 0.9988, overlap 0.96) at 2.09x onnx (openvino_backend.py)
INT8_AVAILABLE = "openvino" in EXACT_CANDIDATES and importlib.util.find_spec("nncf") is not None
DISTURBED_CORES = 0.25  # other processes' average load during the timing above which the decision is flagged
APPROXIMATE_MARGIN = 1.05  # bf16 must be this much faster than the best exact backend: accuracy is not free
# Bulk timing: the sample's first 8 batches of 32, each candidate warmed by one untimed pass first. With 4 batches,
# 3 rounds and only measure_speed's short warm-up, bf16 timed at 0.92x onnx on a quiet AMD EPYC VM where 4,000
# sentences ran at 1.39x: its first passes over new shapes are slow, and short rounds are noisy.
TIMED_SENTENCES = 256
TIMED_SINGLES = 20  # latency timing: one-sentence calls per round
TIMING_ROUNDS = 5
CPU_FEATURES = ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni", "avx512f")


def cpu_features() -> dict:
    """The CPU features the rule reads, from /proc/cpuinfo, plus torch's own dispatch level."""
    flags = cpu_flags()
    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            **{f: f in flags for f in CPU_FEATURES}}


def plan() -> dict[str, list[str]]:
    """The candidates timed on this CPU for each role (before the quality check)."""
    approximate = [*(["bf16"] if native_bf16() else []), *(["openvino-int8"] if INT8_AVAILABLE else [])]
    return {role: [*EXACT_CANDIDATES, *approximate] for role in ("latency", "throughput")}


def _runner(backend, use_type_ids: bool):
    """A function running `backend` over padded batches, as measure_speed calls it."""
    def run(batches):
        with torch.no_grad():
            for input_ids, mask, types in batches:
                backend.forward(input_ids, mask, types if use_type_ids else None)
    return run


def _timings(backends: dict, bulk: list, singles: list, use_type_ids: bool) -> dict:
    """name -> {"bulk_per_s": median sentences/s, "single_ms": median ms per one-sentence call, others' CPU s}."""
    runs = {name: _runner(b, use_type_ids) for name, b in backends.items()}
    for run in runs.values():
        run(bulk)
        run(singles)
    bulk_speed = measure_speed(runs, bulk, rounds=TIMING_ROUNDS, latency_texts=0)
    single_speed = measure_speed(runs, singles, rounds=TIMING_ROUNDS, latency_texts=0)
    return {name: {"bulk_per_s": round(_texts_per_s(bulk_speed[name], bulk), 1),
                   "single_ms": round(1000 / statistics.median(single_speed[name]["texts_per_s"]), 3),
                   "others_cpu_s": round(sum(bulk_speed[name]["other_cpu_s"] + single_speed[name]["other_cpu_s"]), 2)}
            for name in backends}


def _fastest(timings: dict, names: list[str], key: str, higher: bool) -> str:
    """The best of `names` by `key`; an approximate backend only if it beats the best exact one by the margin."""
    def score(name):
        return timings[name][key] if higher else 1 / timings[name][key]
    exact = max((n for n in names if n in EXACT), key=score)
    best = max(names, key=score)
    return best if best in EXACT or score(best) >= APPROXIMATE_MARGIN * score(exact) else exact


class RoutedBackend:
    """Backends computing the same outputs; each batch goes to one of them by its padded size. `long`
    (a function giving the long-text backend, called once on the first such batch) takes the batches longer than
    the sample the gate was checked on, where an approximate backend is unchecked."""

    def __init__(self, latency, throughput, max_latency_tokens: int = LATENCY_MAX_TOKENS, long=None,
                 max_checked_len: int = SAMPLE_MAX_LEN):
        self.latency, self.throughput, self.max_latency_tokens = latency, throughput, max_latency_tokens
        self.hidden_indices, self.need_pooler = latency.hidden_indices, latency.need_pooler
        self.name = latency.name if latency is throughput else f"{latency.name}/{throughput.name}"
        self._make_long, self._long, self.max_checked_len = long, None, max_checked_len
        self._long_lock = threading.Lock()

    def pick(self, input_ids: torch.Tensor):
        if self._make_long is not None and input_ids.shape[1] > self.max_checked_len:
            with self._long_lock:
                if self._long is None:
                    self._long = self._make_long()
            return self._long
        return self.latency if input_ids.numel() <= self.max_latency_tokens else self.throughput

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.pick(input_ids).forward(input_ids, attention_mask, token_type_ids)


def _decision_entry(encoder, gate: QualityGate, sample_size: int):
    machine = {**cpu_features(), "threads": encoder.config.num_threads}
    return export_cache.entry_key(
        "auto", model=export_cache.checkpoint_content_hash(encoder.checkpoint), hidden=list(encoder.hidden_indices),
        pooler=encoder.need_pooler, type_ids=encoder.use_type_ids, gate=asdict(gate), sample=sample_size,
        plan=plan(), max_latency_tokens=LATENCY_MAX_TOKENS, machine=machine, format=DECISION_FORMAT)


def _build(encoder, name: str):
    return make_backend(name, encoder.checkpoint, encoder.hidden_indices, encoder.need_pooler,
                        encoder.use_type_ids, encoder.config.num_threads)


def _sample_vectors(encoder, backend, batches) -> torch.Tensor:
    """What the gate compares: the mean-pooled vector of every exposed layer (and the pooler output), so one
    decision serves every pooling of those layers."""
    rows = []
    with torch.no_grad():
        for input_ids, mask, types in batches:
            hidden, pooled = backend.forward(input_ids, mask, types if encoder.use_type_ids else None)
            m = mask.unsqueeze(-1).float()
            parts = [(hidden[i].float() * m).sum(1) / m.sum(1).clamp(min=1) for i in encoder.hidden_indices]
            if encoder.need_pooler and pooled is not None:
                parts.append(pooled.float())
            rows.append(torch.cat(parts, dim=-1))
    return torch.cat(rows)


def _batches(encoder, texts: list[str], batch: int = BATCH):
    """The sample as padded batches of similar length. Tokenized with a tokenizer of its own: the Encoder's
    may be in use by the caller's thread meanwhile, and fast tokenizers are not shared across threads."""
    tokenizer = TextTokenizer(encoder.checkpoint.tokenizer, min(SAMPLE_MAX_LEN, encoder.checkpoint.model_max_len))
    return padded_batches(tokenizer, texts, batch)


def _gate_check(encoder, reference, backend, batches, gate: QualityGate) -> dict:
    """`backend`'s quality against the reference vectors on `batches`, and whether it passes the gate."""
    quality = measure_quality(reference, _sample_vectors(encoder, backend, batches).numpy())
    return {**quality.to_dict(), "passed": quality.passes(gate)}


def _texts_per_s(speed: dict, batches: list) -> float:
    """Median texts/s of one measure_speed result whose items were `batches`."""
    return sum(len(b[0]) for b in batches) / len(batches) * statistics.median(speed["texts_per_s"])


def _long_batches(encoder, sample: list[str]):
    """LONG_CHECK_TEXTS texts of the model's full length (at most LONG_CHECK_MAX_LEN tokens), or None where the
    model's limit is within the checked length: each text is the sample joined from another starting sentence."""
    max_len = min(LONG_CHECK_MAX_LEN, encoder.checkpoint.model_max_len)
    if max_len <= SAMPLE_MAX_LEN:
        return None
    step = max(1, len(sample) // LONG_CHECK_TEXTS)
    texts = [_joined(sample[i * step:] + sample[: i * step], max_len) for i in range(LONG_CHECK_TEXTS)]
    return padded_batches(TextTokenizer(encoder.checkpoint.tokenizer, max_len), texts, LONG_CHECK_BATCH)


def _joined(sentences: list[str], words: int) -> str:
    """The first sentences joined until they hold `words` words (each word is at least one token), or all."""
    picked, count = [], 0
    for sentence in sentences:
        picked.append(sentence)
        count += len(sentence.split())
        if count >= words:
            break
    return " ".join(picked)


def _long_role(encoder, ready: dict, passed: list[str], long_batches, gate: QualityGate) -> tuple[dict, dict]:
    """(quality of each passed approximate backend on long texts, long texts/s of every eligible backend)."""
    approximates = [n for n in passed if n not in EXACT]
    reference = _sample_vectors(encoder, ready["torch"], long_batches).numpy()
    checks = {name: _gate_check(encoder, reference, ready[name], long_batches, gate) for name in approximates}
    eligible = [n for n in passed if n in EXACT or checks[n]["passed"]]
    speed = measure_speed({n: _runner(ready[n], encoder.use_type_ids) for n in eligible}, long_batches,
                          rounds=3, latency_texts=0)
    return checks, {n: {"long_per_s": round(_texts_per_s(speed[n], long_batches), 2),
                        "others_cpu_s": round(sum(speed[n]["other_cpu_s"]), 2)} for n in eligible}


def _built(encoder, name: str, ready: dict):
    """`name` built (once per decision), or torch fp32 where it cannot be built here (an exporter error)."""
    if name not in ready:
        try:
            ready[name] = _build(encoder, name)
        except Exception as e:
            log.warning("auto: %s does not build here (%s: %s); using torch", name, type(e).__name__, e)
            ready[name] = ready.get("torch") or _build(encoder, "torch")
    return ready[name]


def decide(encoder, gate: QualityGate, sample_size: int, ready: dict | None = None, on_latency=None):
    """Build the candidates, check the approximate one against the gate, time them, record: (RoutedBackend,
    record). `on_latency(backend)` is called as soon as the onnx export is built, before any check or timing."""
    started = time.perf_counter()
    name, described = _decision_entry(encoder, gate, sample_size)
    ready = dict(ready or {})
    candidates = plan()
    for exact in EXACT_CANDIDATES:
        _built(encoder, exact, ready)
    if on_latency is not None:
        on_latency(RoutedBackend(ready["onnx"], ready["onnx"]))
    checks, timings, timing_s, long_checks, long_timings = {}, {}, 0.0, {}, {}
    try:
        sample = english_sentences(sample_size, offset=SAMPLE_OFFSET)
    except SampleUnavailable as e:
        sample, checks["sample"] = None, {"passed": False, "reason": str(e)}
    passed = [n for n in candidates["throughput"] if n in EXACT]
    if sample is not None:
        batches = _batches(encoder, sample)
        approximates = [n for n in candidates["throughput"] if n not in EXACT]
        reference = _sample_vectors(encoder, ready["torch"], batches).numpy() if approximates else None
        for approximate in approximates:
            candidate = _built(encoder, approximate, ready)
            if candidate.name != approximate:  # it did not build here (logged): torch stands in, not a candidate
                checks[approximate] = {"passed": False, "reason": "does not build here"}
                continue
            checks[approximate] = _gate_check(encoder, reference, candidate, batches, gate)
            if checks[approximate]["passed"]:  # never trade accuracy the gate does not allow
                passed.append(approximate)
        singles = _batches(encoder, sample[:TIMED_SINGLES], batch=1)
        timing_started = time.perf_counter()
        timings = _timings({n: ready[n] for n in passed},
                           _batches(encoder, sample[:TIMED_SENTENCES]), singles, encoder.use_type_ids)
        timing_s = time.perf_counter() - timing_started
    # both roles share the candidates (plan()): each picks among those that passed and were timed
    chosen = {"latency": _fastest(timings, passed, "single_ms", higher=False) if timings else "onnx",
              "throughput": _fastest(timings, passed, "bulk_per_s", higher=True) if timings else "onnx"}
    chosen["long"] = None  # all exact, or a model no longer than the checked sentences: nothing to reroute
    long_batches = _long_batches(encoder, sample) if {chosen["latency"], chosen["throughput"]} - set(EXACT) else None
    if long_batches is not None:  # an approximate backend was timed, so the sample is there
        long_checks, long_timings = _long_role(encoder, ready, passed, long_batches, gate)
        chosen["long"] = _fastest(long_timings, list(long_timings), "long_per_s", higher=True)
    record = {"entry": described, "latency": chosen["latency"], "throughput": chosen["throughput"],
              "long": chosen["long"], "max_checked_len": SAMPLE_MAX_LEN, "max_latency_tokens": LATENCY_MAX_TOKENS,
              "quality": checks, "timings": timings, "long_quality": long_checks, "long_timings": long_timings,
              "cpu": cpu_features(),
              "seconds": round(time.perf_counter() - started, 2),
              "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    routed = from_record(encoder, record, ready)
    record["backend"] = routed.name
    decision_file = export_cache.entry_dir(name) / "decision.json"
    export_cache.write_json(decision_file, record)
    others = sum(t["others_cpu_s"] for t in timings.values()) / max(timing_s, 1e-9)
    if others > DISTURBED_CORES:
        log.warning("auto: other processes kept %.2f cores busy while backends were timed, so %s may not be the "
                    "fastest on a quiet machine; delete %s to decide again, or force a backend",
                    others, routed.name, decision_file.parent)
    log.info("auto: %s for batches up to %d tokens, %s above, %s for texts over %d tokens, for %s (timed: %s; "
             "long texts: %s)", record["latency"], LATENCY_MAX_TOKENS, record["throughput"], record["long"],
             SAMPLE_MAX_LEN, encoder.checkpoint.path, timings, long_timings)
    return routed, record


def from_record(encoder, record: dict, ready: dict | None = None) -> RoutedBackend:
    ready = dict(ready or {})
    latency = _built(encoder, record["latency"], ready)
    long = record.get("long")
    throughput = _built(encoder, record["throughput"], ready)
    # the long backend is built on first use, or is one of the two already built; the closure holds only those
    # two, so the candidates a decision built and did not choose are freed
    pair = {record["latency"]: latency, record["throughput"]: throughput}
    return RoutedBackend(latency, throughput, long=(lambda: _built(encoder, long, pair)) if long else None)


def cached_choice(encoder, gate: QualityGate, sample_size: int):
    """(backend, decision record) when this combination was decided before and the choice still builds, else None."""
    name, described = _decision_entry(encoder, gate, sample_size)
    record = export_cache.read_json(export_cache.entry_dir(name) / "decision.json")
    if record is not None and record.get("entry") == described and \
            record.get("latency") in CONCRETE and record.get("throughput") in CONCRETE and \
            record.get("long") in (*CONCRETE, None):
        try:
            return from_record(encoder, record), record
        except Exception as e:
            log.warning("auto: cached choice %s no longer builds (%s); deciding again", record["backend"], e)
    return None


_PENDING: dict[str, list] = {}  # decision entry -> Encoders waiting for the decision already under way
_PENDING_LOCK = threading.Lock()


class AutoChoice:
    """The `auto` decision of one Encoder: read from the cache, or made in a background thread while the Encoder
    serves on the exact torch backend (an Encoder created while the same combination is being decided waits for
    that decision instead of starting another). `on_decided(backend, record)` is called at each switch."""

    def __init__(self, encoder, gate: QualityGate, sample_size: int, on_decided):
        self.record = None
        self.done = threading.Event()
        self._encoder, self._on_decided = encoder, on_decided
        found = cached_choice(encoder, gate, sample_size)
        if found is not None:
            self.backend, self.record = found
            self.done.set()
            return
        start = _build(encoder, "torch")  # exact and export-free: the Encoder is usable at once
        self.backend = RoutedBackend(start, start)
        entry, _ = _decision_entry(encoder, gate, sample_size)
        with _PENDING_LOCK:
            if entry in _PENDING:
                _PENDING[entry].append(self._adopt)
                return
            _PENDING[entry] = []

        def work():
            try:
                backend, record = decide(encoder, gate, sample_size, ready={"torch": start},
                                         on_latency=lambda b: self._on_decided(b, None))
            except Exception as e:  # never leave the Encoder without a working backend
                log.warning("auto: deciding failed (%s: %s); staying on torch", type(e).__name__, e)
                backend, record = self.backend, {"backend": "torch", "latency": "torch", "throughput": "torch",
                                                 "reason": f"failed: {e}"}
            self._settle(backend, record)
            with _PENDING_LOCK:
                waiting = _PENDING.pop(entry, [])
            for adopt in waiting:
                adopt(record)

        threading.Thread(target=work, name="bertserve-auto-backend", daemon=True).start()

    def _adopt(self, record: dict):
        """Another Encoder's decision covers this combination: build the chosen pair for this one."""
        try:
            backend = from_record(self._encoder, record, {"torch": self.backend.latency})
        except Exception as e:
            log.warning("auto: %s does not build for this Encoder (%s); staying on torch", record["backend"], e)
            backend = self.backend
        self._settle(backend, record)

    def _settle(self, backend, record: dict):
        self.backend, self.record = backend, record
        self._on_decided(backend, record)
        self.done.set()

    def wait(self, timeout: float | None = None) -> dict | None:
        self.done.wait(timeout)
        return self.record
