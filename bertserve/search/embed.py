"""How a collection turns query and document texts into vectors.

A collection accepts an `Encoder` (anything with `.encode(texts)`) or a plain callable
`embed(texts) -> ndarray`, which lets the server route texts through its batcher. The encoder's config
is saved with the collection so `Collection.open` can rebuild the same encoder when none is given.
"""
from __future__ import annotations

import json

import numpy as np


class Embedder:
    def __init__(self, encoder=None, saved_config: dict | None = None):
        if encoder is not None and not (hasattr(encoder, "encode") or callable(encoder)):
            raise TypeError("encoder must be an Encoder or a callable embed(texts) -> ndarray")
        self.encoder = encoder
        self.saved_config = saved_config

    def _function(self):
        if self.encoder is None:
            if not self.saved_config:
                raise ValueError("this collection has no encoder: pass vectors=, or open it with encoder=")
            from bertserve.encode import Encoder, EncoderConfig  # only collections of texts need the model stack

            self.encoder = Encoder(config=EncoderConfig.from_dict(self.saved_config))
        return self.encoder.encode if hasattr(self.encoder, "encode") else self.encoder

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self._function()(list(texts)), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ValueError(f"the encoder returned shape {vectors.shape} for {len(texts)} texts; "
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
