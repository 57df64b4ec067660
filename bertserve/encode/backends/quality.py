"""The quality gate: how close a backend's vectors are to the exact torch fp32 vectors of the same texts."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bertserve.evaluation import neighbour_overlap, paired_cosines


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


def measure_quality(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> Quality:
    """Cosine of each row to its reference row, and how many of each row's k nearest neighbours (cosine, among
    the same texts) stay the same: the part of search results a user would see change."""
    cos = paired_cosines(reference, candidate)
    return Quality(float(cos.mean()), float(cos.min()), neighbour_overlap(reference, candidate, k))
