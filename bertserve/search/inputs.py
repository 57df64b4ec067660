"""Checks of what callers hand a collection: ids, texts and metadata, with errors that name the problem."""
from __future__ import annotations

import json
import uuid

import numpy as np

from bertserve.errors import BadInput


def count_items(texts, vectors) -> int:
    if vectors is not None:
        return len(vectors)
    if texts is None:
        raise BadInput("give texts or vectors")
    return len(texts)


def prepare_add(col, texts, ids, metadata, vectors) -> tuple[list[str], list | None, list[str], np.ndarray]:
    """Checked (ids, texts, metadata as JSON, vectors) of an `add`, for every collection engine;
    `col` turns texts into vectors and checks them (embed.VectorInput)."""
    n = count_items(texts, vectors)
    texts = check_texts(texts, n)
    ids = check_ids(ids, n) if ids is not None else [uuid.uuid4().hex for _ in range(n)]
    metas = check_metadata(metadata, n)
    return ids, texts, metas, col._vectors_for(texts, vectors)


def check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")


def check_texts(texts, n):
    if texts is None:
        return None
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise BadInput("texts must be a list of strings")
    if len(texts) != n:
        raise BadInput(f"got {len(texts)} texts for {n} vectors")
    return list(texts)


def check_ids(ids, n, unique=True) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, (list, tuple, np.ndarray)):
        raise BadInput("ids must be a list of strings")
    ids = list(ids)
    if not all(isinstance(i, str) and i for i in ids):
        raise BadInput("ids must be non-empty strings")
    if n is not None and len(ids) != n:
        raise BadInput(f"got {len(ids)} ids for {n} items")
    if unique and len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise BadInput(f"duplicate ids in one call: {sorted(set(dup))[:10]}")
    return ids


def check_metadata(metadata, n) -> list[str]:
    if metadata is None:
        return ["{}"] * n
    if isinstance(metadata, dict) or len(metadata) != n:
        raise BadInput(f"metadata must be a list of {n} objects (one per item)")
    return [dump_meta(m) for m in metadata]


def dump_meta(meta) -> str:
    """Serialize one metadata object, refusing what JSON (and our filters) cannot represent."""
    if meta is None:
        return "{}"
    if not isinstance(meta, dict):
        raise BadInput(f"metadata must be a JSON object (dict), got {type(meta).__name__}")
    for key in meta:
        if not isinstance(key, str):
            raise BadInput(f"metadata keys must be strings, got {key!r}")
    try:
        return json.dumps(meta, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"metadata is not JSON-serializable: {exc}") from None

