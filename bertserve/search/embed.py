"""How a collection turns query and document texts into vectors.

A collection accepts an `Encoder` (anything with `.encode(texts)`) or a plain callable
`embed(texts) -> ndarray`, which lets the server route texts through its batcher. The encoder's config
is saved with the collection so `Collection.open` can rebuild the same encoder when none is given.

The encoder's fingerprint (`Encoder.fingerprint()`: model content hash, pooling, layers, normalize,
max_seq_len, dim) is saved too. Vectors of another model or pooling live in another space, so a query encoder
whose fingerprint differs from the one that built the collection is refused (`Conflict`, naming both) instead
of returning wrong neighbours; re-embedding the stored texts is an explicit step (`Collection.reembed`). A bare
callable has no fingerprint and cannot be checked; a wrapper (the server's BatchedEncoder) passes on the
fingerprint of the encoder it wraps.
"""
from __future__ import annotations

import json

import numpy as np

from bertserve.errors import BadInput, BadInputType, Conflict

# fingerprint keys that identify the vector space (the model's folder name is only there to name it)
SPACE_KEYS = ("model_sha256", "pooling", "layers", "normalize", "mask_cls_sep", "max_seq_len", "dim")


def fingerprint_of(encoder) -> dict | None:
    """The fingerprint of an Encoder, of the Encoder behind a bound method (`encoder.encode`) or of the one a
    wrapper forwards to (the server's BatchedEncoder); None for a bare callable."""
    for obj in (encoder, getattr(encoder, "__self__", None)):
        fp = getattr(obj, "fingerprint", None)
        if callable(fp):
            return fp()
    return None


def describe_fingerprint(fp: dict) -> str:
    return (f"{fp.get('model', '?')} (sha256 {str(fp.get('model_sha256', '?'))[:12]}, {fp.get('pooling')}, "
            f"layers {fp.get('layers')}, normalize {fp.get('normalize')}, max_seq_len {fp.get('max_seq_len')}, "
            f"dim {fp.get('dim')})")


def same_space(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in SPACE_KEYS if k in a and k in b)


class Embedder:
    def __init__(self, encoder=None, saved_config: dict | None = None, expected: dict | None = None,
                 where: str = "this collection"):
        """`expected`: the fingerprint of the encoder that built the collection, checked against `encoder`
        now and against an encoder rebuilt from `saved_config` when it is built."""
        if encoder is not None and not (hasattr(encoder, "encode") or callable(encoder)):
            raise BadInputType("encoder must be an Encoder or a callable embed(texts) -> ndarray")
        self.encoder = encoder
        self.saved_config = saved_config
        self.expected, self.where = expected, where
        if encoder is not None:
            self._check(encoder)

    def _check(self, encoder):
        got = fingerprint_of(encoder) if self.expected else None
        if got is not None and not same_space(self.expected, got):
            raise Conflict(f"{self.where} was built by {describe_fingerprint(self.expected)}, and the encoder given "
                           f"is {describe_fingerprint(got)}: its vectors are in another space and would give wrong "
                           "neighbours. Open it with the encoder that built it (or without one, to rebuild that), "
                           "or re-embed every stored text with the new one: Collection.open(path, encoder=..., "
                           "reembed=True), `bertserve index ... --reembed`")

    def fingerprint(self) -> dict | None:
        return fingerprint_of(self.encoder) if self.encoder is not None else self.expected

    def _function(self):
        if self.encoder is None:
            if not self.saved_config:
                raise BadInput("this collection has no encoder: pass vectors=, or open it with encoder=")
            from bertserve.encode import (  # only collections of texts need the model stack
                Encoder,
                EncoderConfig,
            )

            encoder = Encoder(config=EncoderConfig.from_dict(self.saved_config))
            self._check(encoder)  # the model folder may have changed since the collection was built
            self.encoder = encoder
        return self.encoder.encode if hasattr(self.encoder, "encode") else self.encoder

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self._function()(list(texts)), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise BadInput(f"the encoder returned shape {vectors.shape} for {len(texts)} texts; "
                             "a collection needs one pooled vector per text")
        return vectors

    def dim(self) -> int:
        width = getattr(self.encoder, "dim", None)
        if isinstance(width, int):
            return width
        return int(self.embed(["dimension probe"]).shape[1])

    def config(self) -> dict | None:
        """The encoder's settings as JSON (an Encoder has them; a bare callable does not)."""
        cfg = getattr(self.encoder, "config", None)
        if not hasattr(cfg, "to_dict"):
            return self.saved_config
        return json.loads(json.dumps(cfg.to_dict(), default=str))


class VectorInput:
    """Query and item vectors checked the same way by every collection engine.

    Needs `self.dim`, `self.metric` and `self.embedder`; cosine vectors are normalized here so that
    engines can search them by inner product.
    """

    def _queries(self, query) -> tuple[bool, np.ndarray]:
        if isinstance(query, str):
            return True, self._vectors_for([query], None)
        if isinstance(query, (list, tuple)) and query and all(isinstance(q, str) for q in query):
            return False, self._vectors_for(list(query), None)
        arr = np.asarray(query) if not isinstance(query, np.ndarray) else query
        if arr.ndim == 1:
            return True, self._check_vectors(arr[None, :])
        if arr.ndim == 2 and len(arr):
            return False, self._check_vectors(arr)
        raise BadInput("query must be a text, a list of texts, a vector or a 2-D array of vectors")

    def _vectors_for(self, texts, vectors) -> np.ndarray:
        if vectors is not None:
            return self._check_vectors(vectors)
        if texts is None:
            raise BadInput("give texts or vectors")
        return self._check_vectors(self.embedder.embed(texts))

    def _check_vectors(self, vectors) -> np.ndarray:
        try:
            arr = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadInput("vectors must be numeric arrays") from None
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise BadInput(f"vectors must have shape (n, {self.dim}), got {arr.shape}")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise BadInput(f"vectors contain NaN or inf (rows {np.flatnonzero(bad)[:10].tolist()})")
        arr = np.ascontiguousarray(arr)
        if self.metric == "cosine":
            with np.errstate(over="ignore", under="ignore"):
                norms = np.linalg.norm(arr, axis=1, keepdims=True)
            # the float32 norm of a row of 1e38s overflows (dividing would zero the row silently) and one of
            # 1e-45s underflows to 0: such rows are first scaled by their largest entry, which keeps the cosine
            odd = ~np.isfinite(norms[:, 0]) | ((norms[:, 0] == 0) & (arr != 0).any(axis=1))
            if odd.any():
                arr = arr.copy()
                arr[odd] /= np.abs(arr[odd]).max(axis=1, keepdims=True)
                norms[odd] = np.linalg.norm(arr[odd], axis=1, keepdims=True)
            if (norms == 0).any():
                raise BadInput(f"zero vectors have no cosine (rows {np.flatnonzero(norms[:, 0] == 0)[:10].tolist()})")
            arr = arr / norms
        return arr
