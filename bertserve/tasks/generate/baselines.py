"""Count-based reference language models over the same tokens and the same held-out targets as the neural
model, so "perplexity X vs Y" compares like with like.

Unigram: add-one smoothing over the model's whole vocabulary. Bigram: interpolated Kneser-Ney (absolute
discount 0.75, continuation counts with add-one), the standard strong count-based bigram.
"""
from __future__ import annotations

import math

import numpy as np


def _targets(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, token) for every predicted position of every block (position 0 has no context)."""
    return blocks[:, :-1].reshape(-1), blocks[:, 1:].reshape(-1)


def unigram_perplexity(train: np.ndarray, blocks: np.ndarray, vocab_size: int) -> float:
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    prob = (counts + 1.0) / (counts.sum() + vocab_size)
    _, cur = _targets(blocks)
    return math.exp(-np.log(prob[cur]).mean())


def bigram_perplexity(train: np.ndarray, blocks: np.ndarray, vocab_size: int, discount: float = 0.75) -> float:
    v = np.int64(vocab_size)
    pairs, pair_counts = np.unique(train[:-1].astype(np.int64) * v + train[1:], return_counts=True)
    prev_of, next_of = pairs // v, pairs % v
    context_count = np.bincount(prev_of, weights=pair_counts, minlength=vocab_size)   # c(v, .)
    followers = np.bincount(prev_of, minlength=vocab_size).astype(np.float64)          # N1+(v, .)
    continuation = np.bincount(next_of, minlength=vocab_size).astype(np.float64)       # N1+(., w)
    p_cont = (continuation + 1.0) / (continuation.sum() + vocab_size)

    prev, cur = _targets(blocks)
    codes = prev.astype(np.int64) * v + cur
    at = np.searchsorted(pairs, codes).clip(max=len(pairs) - 1)
    seen = pairs[at] == codes
    c_pair = np.where(seen, pair_counts[at], 0).astype(np.float64)
    c_ctx = context_count[prev]
    known = c_ctx > 0
    safe_ctx = np.where(known, c_ctx, 1.0)
    p = np.where(known,
                 np.maximum(c_pair - discount, 0.0) / safe_ctx + discount * followers[prev] / safe_ctx * p_cont[cur],
                 p_cont[cur])
    return math.exp(-np.log(p).mean())
