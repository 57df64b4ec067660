"""`backend="auto"`: measure the candidates once on real text, keep the fastest that passes the quality gate.

The first Encoder for a (model, outputs, pooling, gate, machine) combination encodes a few hundred real sentences
with torch fp32 (the reference) and with each fast candidate, in interleaved rounds, and writes the decision to
the cache; later Encoders read it and build only the chosen backend. When no fast candidate passes, the choice
falls back to the fastest exact backend (torch or onnx fp32), so `auto` never trades accuracy it was not allowed to.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict

from bertserve.encode.backends import EXACT, make_backend
from bertserve.encode.backends import export_cache
from bertserve.encode.backends.bf16 import cpu_flags, native_bf16
from bertserve.machine_load import Meter
from bertserve.encode.backends.quality import QualityGate, measure_quality
from bertserve.encode.backends.sample import SampleUnavailable, english_sentences

log = logging.getLogger(__name__)

SAMPLE_OFFSET = 400  # the first sentences calibrate nothing today, but stay clear of them for future recipes
ROUNDS = 2
DECISION_FORMAT = 1
DISTURBED_CORES = 0.25  # other processes' average load during the timing above which the decision is flagged


def candidates() -> list[str]:
    """Fast candidates on this machine, then the exact ones; torch (the reference) is timed as well."""
    fast = ["onnx-int8"] + (["bf16"] if native_bf16() else [])
    return fast + ["onnx", "torch"]


def _decision_entry(encoder, gate: QualityGate, sample_size: int):
    cfg = encoder.config
    machine = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
               "bf16": native_bf16(), "vnni": "avx512_vnni" in cpu_flags(), "threads": cfg.num_threads}
    return export_cache.entry_key(
        "auto", model=export_cache.checkpoint_content_hash(encoder.checkpoint), pooling=cfg.pooling, layers=list(cfg.layers),
        max_seq_len=cfg.max_seq_len, normalize=cfg.normalize, mask_cls_sep=cfg.mask_cls_sep, gate=asdict(gate),
        sample=sample_size, candidates=candidates(), machine=machine, format=DECISION_FORMAT)


def _build(encoder, name: str):
    return make_backend(name, encoder.checkpoint, encoder.hidden_indices, encoder.need_pooler,
                        encoder.use_type_ids, encoder.config.num_threads)


def _measure(encoder, items, names: list[str]) -> dict:
    """Build each backend, encode the sample with it in interleaved rounds; best time and vectors per backend."""
    results: dict[str, dict] = {}
    backends = {}
    for name in names:
        try:
            backends[name] = _build(encoder, name)
        except Exception as e:  # a candidate that cannot run here is simply not chosen, but the reason is kept
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    saved = encoder.backend
    try:
        vectors = {}
        for name, backend in backends.items():  # warm-up: first calls allocate and pick kernels
            encoder.backend = backend
            encoder.embed(items[:32])
        for _ in range(ROUNDS):
            for name, backend in backends.items():
                encoder.backend = backend
                start = time.perf_counter()
                vectors[name] = encoder.embed(items)
                elapsed = time.perf_counter() - start
                results.setdefault(name, {"seconds": elapsed})
                results[name]["seconds"] = min(results[name]["seconds"], elapsed)
    finally:
        encoder.backend = saved
    return {"results": results, "vectors": vectors, "backends": backends}


def choose_backend(encoder, gate: QualityGate, sample_size: int):
    """(backend, decision record) for `auto`: from the cache when decided before, else measured now."""
    name, described = _decision_entry(encoder, gate, sample_size)
    decision_file = export_cache.entry_dir(name) / "decision.json"
    record = export_cache.read_json(decision_file)
    if record is not None and record.get("entry") == described and record.get("backend") in candidates():
        try:
            return _build(encoder, record["backend"]), record
        except Exception as e:
            log.warning("auto: cached choice %s no longer builds (%s); measuring again", record["backend"], e)
    try:
        texts = english_sentences(sample_size, offset=SAMPLE_OFFSET)
    except SampleUnavailable as e:
        log.warning("auto: %s; using the exact torch backend", e)
        return _build(encoder, "torch"), {"backend": "torch", "reason": str(e)}
    items = encoder.tokenize(texts)
    with Meter() as load:
        measured = _measure(encoder, items, candidates())
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
    record = {"entry": described, "backend": chosen, "fallback_to_exact": fallback, "sentences": len(items),
              "others_cores": round(others, 3),
              "candidates": results, "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    export_cache.write_json(decision_file, record)
    log.info("auto: chose %s for %s (%s)", chosen, encoder.checkpoint.path,
             ", ".join(f"{c} {results[c].get('seconds', float('nan')):.2f}s" for c in timed))
    return measured["backends"].get(chosen) or _build(encoder, chosen), record
