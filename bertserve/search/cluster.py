"""Clustering and reduction of stored vectors with Faiss (k-means, PCA)."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from bertserve.errors import BadInput


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, dim)
    labels: np.ndarray  # cluster of each input vector
    objective: float  # final k-means objective as Faiss reports it


def kmeans(vectors: np.ndarray, k: int, niter: int = 20, seed: int = 1234, spherical: bool = False) -> KMeansResult:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    if k > len(vectors):
        raise BadInput(f"cannot make {k} clusters from {len(vectors)} vectors")
    km = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=spherical)
    km.train(vectors)
    _, labels = km.index.search(vectors, 1)
    return KMeansResult(km.centroids.copy(), labels[:, 0], float(km.obj[-1]) if len(km.obj) else 0.0)


def fit_pca(vectors: np.ndarray, d_out: int) -> faiss.PCAMatrix:
    """PCA to d_out dimensions trained on `vectors`; reduce others with `.apply(X)`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d_in = vectors.shape[1]
    if isinstance(d_out, bool) or not isinstance(d_out, int) or not 0 < d_out <= d_in:
        raise BadInput(f"PCA output dimension must be between 1 and {d_in}, got {d_out!r}")
    if len(vectors) < d_out:
        raise BadInput(f"PCA to {d_out} dimensions needs at least {d_out} vectors, got {len(vectors)}")
    pca = faiss.PCAMatrix(d_in, d_out)
    pca.train(vectors)
    return pca
