"""`backend="auto"`: measure the candidates once on real text, keep the fastest that passes the quality gate.

The decision depends on what the backend computes, not on what the Encoder does with it afterwards: it is
made per (model content, hidden layers the backend must expose, pooler, gate, sample size, machine), so
Encoders that differ only in pooling, normalization, max_seq_len or mask_cls_sep share one decision (and the
ONNX exports, which are keyed the same way). The quality gate is applied to the mean-pooled vectors of the
exposed layers (and the pooler output where one is needed).

The first Encoder for such a combination does not wait for the measurement: it starts on the exact torch
backend, which needs no export, and measures in a background thread (a few hundred real sentences through
torch fp32, the reference, and each fast candidate, in interleaved rounds); when the decision is made it is
written to the cache and the Encoder switches to the chosen backend between two batches. Later Encoders read
the decision and build only the chosen backend. When no fast candidate passes, the choice falls back to the
fastest exact backend (torch or onnx fp32), so `auto` never trades accuracy it was not allowed to.
"""
from __future__ import annotations

import logging
import os
import platform
import threading
import time
from dataclasses import asdict

import torch

from bertserve.encode.backends import EXACT, make_backend
from bertserve.encode.backends import export_cache
from bertserve.encode.backends.bf16 import cpu_flags, native_bf16
from bertserve.encode.backends.quality import QualityGate, measure_quality
from bertserve.encode.backends.sample import english_sentences
from bertserve.evaluation import SampleUnavailable
from bertserve.machine_load import Meter
from bertserve.models.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

SAMPLE_OFFSET = 400  # the first sentences calibrate nothing today, but stay clear of them for future recipes
ROUNDS = 2
DECISION_FORMAT = 2  # 2: keyed by exposed layers, not pooling; measured on mean-pooled layers
SAMPLE_MAX_LEN = 128  # token limit of the measured sentences (they are short: this cuts only outliers)
BATCH = 32
DISTURBED_CORES = 0.25  # other processes' average load during the timing above which the decision is flagged


def candidates() -> list[str]:
    """Fast candidates on this machine, then the exact ones; torch (the reference) is timed as well."""
    fast = ["onnx-int8"] + (["bf16"] if native_bf16() else [])
    return fast + ["onnx", "torch"]


def _decision_entry(encoder, gate: QualityGate, sample_size: int):
    machine = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
               "bf16": native_bf16(), "vnni": "avx512_vnni" in cpu_flags(), "threads": encoder.config.num_threads}
    return export_cache.entry_key(
        "auto", model=export_cache.checkpoint_content_hash(encoder.checkpoint), hidden=list(encoder.hidden_indices),
        pooler=encoder.need_pooler, type_ids=encoder.use_type_ids, gate=asdict(gate), sample=sample_size,
        candidates=candidates(), machine=machine, format=DECISION_FORMAT)


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


def _batches(encoder, texts: list[str]):
    """The sample as padded batches of similar length. Tokenized with a tokenizer of its own: the Encoder's
    may be in use by the caller's thread meanwhile, and fast tokenizers are not shared across threads."""
    tokenizer = TextTokenizer(encoder.checkpoint.tokenizer, min(SAMPLE_MAX_LEN, encoder.checkpoint.model_max_len))
    windows = sorted(((item.windows[0], item.type_ids[0]) for item in tokenizer(texts)), key=lambda w: len(w[0]))
    out = []
    for start in range(0, len(windows), BATCH):
        chunk = windows[start:start + BATCH]
        length = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), length), tokenizer.pad_id, dtype=torch.long)
        types = torch.zeros((len(chunk), length), dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, (ids, tids) in enumerate(chunk):
            input_ids[row, :len(ids)], types[row, :len(tids)], mask[row, :len(ids)] = (
                torch.tensor(ids), torch.tensor(tids), 1)
        out.append((input_ids, mask, types))
    return out


def _measure(encoder, batches, names: list[str], ready: dict) -> dict:
    """Build each backend (reusing `ready` ones), run the sample through it in interleaved rounds; best time
    and vectors per backend."""
    results: dict[str, dict] = {}
    backends = {}
    for name in names:
        try:
            backends[name] = ready.get(name) or _build(encoder, name)
        except Exception as e:  # a candidate that cannot be built here (missing CPU feature, exporter error)
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    vectors = {}
    for name, backend in backends.items():  # warm-up: first calls allocate and pick kernels
        _sample_vectors(encoder, backend, batches[:1])
    for _ in range(ROUNDS):
        for name, backend in backends.items():
            start = time.perf_counter()
            vectors[name] = _sample_vectors(encoder, backend, batches).numpy()
            elapsed = time.perf_counter() - start
            results.setdefault(name, {"seconds": elapsed})
            results[name]["seconds"] = min(results[name]["seconds"], elapsed)
    return {"results": results, "vectors": vectors, "backends": backends}


def cached_choice(encoder, gate: QualityGate, sample_size: int):
    """(backend, decision record) when this combination was decided before and the choice still builds, else None."""
    name, described = _decision_entry(encoder, gate, sample_size)
    record = export_cache.read_json(export_cache.entry_dir(name) / "decision.json")
    if record is not None and record.get("entry") == described and record.get("backend") in candidates():
        try:
            return _build(encoder, record["backend"]), record
        except Exception as e:
            log.warning("auto: cached choice %s no longer builds (%s); measuring again", record["backend"], e)
    return None


def decide(encoder, gate: QualityGate, sample_size: int, ready: dict | None = None):
    """Measure the candidates now and record the decision: (backend, decision record)."""
    name, described = _decision_entry(encoder, gate, sample_size)
    decision_file = export_cache.entry_dir(name) / "decision.json"
    try:
        texts = english_sentences(sample_size, offset=SAMPLE_OFFSET)
    except SampleUnavailable as e:
        log.warning("auto: %s; using the exact torch backend", e)
        return (ready or {}).get("torch") or _build(encoder, "torch"), {"backend": "torch", "reason": str(e)}
    batches = _batches(encoder, texts)
    with Meter() as load:
        measured = _measure(encoder, batches, candidates(), ready or {})
    others = load.sample.others_cpu / max(load.sample.wall, 1e-9)
    results, vectors = measured["results"], measured["vectors"]
    reference = vectors["torch"]
    for cand, vecs in vectors.items():
        quality = measure_quality(reference, vecs)
        results[cand].update(quality.to_dict(), passed=quality.passes(gate))
    timed = [c for c in results if "seconds" in results[c]]
    passing = [c for c in timed if results[c]["passed"]]
    fallback = not any(c not in EXACT for c in passing)
    pool = [c for c in timed if c in EXACT and results[c]["passed"]] if fallback else passing
    chosen = min(pool or ["torch"], key=lambda c: results.get(c, {}).get("seconds", float("inf")))
    if others > DISTURBED_CORES:
        log.warning("auto: other processes kept %.2f cores busy while backends were timed, so the choice of %s may "
                    "not be the fastest on a quiet machine; delete %s to measure again, or force a backend",
                    others, chosen, decision_file.parent)
    record = {"entry": described, "backend": chosen, "fallback_to_exact": fallback, "sentences": len(texts),
              "others_cores": round(others, 3), "seconds": round(load.sample.wall, 2),
              "candidates": results, "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    export_cache.write_json(decision_file, record)
    log.info("auto: chose %s for %s (%s)", chosen, encoder.checkpoint.path,
             ", ".join(f"{c} {results[c].get('seconds', float('nan')):.2f}s" for c in timed))
    return measured["backends"].get(chosen) or _build(encoder, chosen), record


_PENDING: dict[str, list] = {}  # decision entry -> Encoders waiting for the measurement already under way
_PENDING_LOCK = threading.Lock()


class AutoChoice:
    """The `auto` decision of one Encoder: read from the cache, or measured in a background thread while the
    Encoder serves on the exact torch backend (an Encoder created while the same combination is being measured
    waits for that measurement instead of starting another). `on_decided(backend, record)` is called once the
    decision is made."""

    def __init__(self, encoder, gate: QualityGate, sample_size: int, on_decided):
        self.record = None
        self.done = threading.Event()
        self._encoder, self._on_decided = encoder, on_decided
        found = cached_choice(encoder, gate, sample_size)
        if found is not None:
            self.backend, self.record = found
            self.done.set()
            return
        self.backend = _build(encoder, "torch")  # exact and export-free: the Encoder is usable at once
        entry, _ = _decision_entry(encoder, gate, sample_size)
        with _PENDING_LOCK:
            if entry in _PENDING:
                _PENDING[entry].append(self._adopt)
                return
            _PENDING[entry] = []
        start = self.backend

        def measure():
            try:
                backend, record = decide(encoder, gate, sample_size, ready={"torch": start})
            except Exception as e:  # never leave the Encoder without a working backend
                log.warning("auto: measuring backends failed (%s: %s); staying on torch", type(e).__name__, e)
                backend, record = start, {"backend": "torch", "reason": f"measurement failed: {e}"}
            self._settle(backend, record)
            with _PENDING_LOCK:
                waiting = _PENDING.pop(entry, [])
            for adopt in waiting:
                adopt(record)

        threading.Thread(target=measure, name="bertserve-auto-backend", daemon=True).start()

    def _adopt(self, record: dict):
        """Another Encoder's measurement decided this combination: build the chosen backend for this one."""
        try:
            backend = self.backend if record["backend"] == "torch" else _build(self._encoder, record["backend"])
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
