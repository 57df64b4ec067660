"""The quality gate: how close a backend's vectors are to the exact torch fp32 vectors of the same texts."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bertserve.errors import BadInput


@dataclass(frozen=True)
class QualityGate:
    """Thresholds a fast backend must reach against torch fp32 on real text to be chosen by `auto`."""
    mean_cosine: float = 0.995
    min_cosine: float = 0.98
    top10_overlap: float = 0.95


@dataclass(frozen=True)
class Quality:
    mean_cosine: float
    min_cosine: float
    top10_overlap: float

    def passes(self, gate: QualityGate) -> bool:
        return (self.mean_cosine >= gate.mean_cosine and self.min_cosine >= gate.min_cosine
                and self.top10_overlap >= gate.top10_overlap)

    def to_dict(self) -> dict:
        return asdict(self)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)  # NONE pooling: a text's token vectors compare as one row
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top_k(unit: np.ndarray, k: int) -> np.ndarray:
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def measure_quality(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> Quality:
    """Cosine of each row to its reference row, and how many of each row's k nearest neighbours (cosine, among
    the same texts) stay the same: the part of search results a user would see change."""
    if reference.shape != candidate.shape:
        raise BadInput(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref, got = _unit_rows(reference), _unit_rows(candidate)
    cos = (ref * got).sum(1)
    k = min(k, len(ref) - 1)
    overlap = 1.0
    if k > 0:
        a, b = _top_k(ref, k), _top_k(got, k)
        overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))
    return Quality(float(cos.mean()), float(cos.min()), overlap)
