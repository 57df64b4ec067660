"""Summaries and keywords as engines (bertserve.engine.contract), so the server's one Batcher serves them.

A request is one document: `prepare` splits it and tokenizes its sentence pieces (and keyword candidates)
once with the served encoder; its items are those tokenized pieces, so the batcher packs a long article's
sentences into token-budget batches and splits it across batches like any large request; `run` is the
encoder's forward pass; `finish` ranks the vectors. Both engines share the served encoder's weights (no
second copy of the model), and each has its own Batcher, so /summarize and /keywords requests, batches and
errors show in /metrics and /status under their own labels.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from bertserve.engine.contract import Engine, Prepared
from bertserve.errors import BadInput
from bertserve.tasks.summarize.document import checked_vectors
from bertserve.tasks.summarize.keywords import finish_keywords, prepare_keywords
from bertserve.tasks.summarize.summarize import finish_summary, prepare_summary


class DocumentEngine(Engine):
    """One document in, the served encoder's vectors of its pieces, a ranking out (see the subclasses)."""

    kind: ClassVar[str] = "document"
    _prepare: ClassVar[Callable]   # text, window, **options -> a job with .texts
    _finish: ClassVar[Callable]    # job, vectors -> the answer

    def __init__(self, encoder, name: str | None = None):
        self.encoder = encoder
        self._name = name

    @property
    def name(self) -> str:
        return self._name or self.encoder.name

    def prepare(self, inputs, **options) -> Prepared:
        if len(inputs) != 1:
            raise BadInput(f"/{self.kind} takes one text per request, got {len(inputs)}")
        job = type(self)._prepare(inputs[0], self.encoder.max_seq_len, **options)
        return Prepared(self.encoder.tokenize(job.texts), job)

    def run(self, items: list) -> np.ndarray:
        return self.encoder.embed(items)

    def finish(self, prepared: Prepared, rows: list):
        vectors = checked_vectors(np.stack(rows) if rows else np.zeros((0, 1)), len(prepared.items))
        return type(self)._finish(prepared.context, vectors)

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "max_seq_len": self.encoder.max_seq_len}


class SummarizeEngine(DocumentEngine):
    kind = "summarize"
    _prepare = staticmethod(prepare_summary)
    _finish = staticmethod(lambda job, vectors: finish_summary(job, vectors).to_dict())


class KeywordsEngine(DocumentEngine):
    kind = "keywords"
    _prepare = staticmethod(prepare_keywords)
    _finish = staticmethod(lambda job, vectors: [k.to_dict() for k in finish_keywords(job, vectors)])
