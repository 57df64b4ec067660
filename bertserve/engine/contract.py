"""The engine contract: what every task (encode, classify, ner, summarize, ...) implements so the one
Batcher, the metrics and every front-end can serve it without knowing which task it is.

A request goes through three steps:

    prepared = engine.prepare(inputs, **options)   # check and tokenize; cheap; raises bertserve.errors.BadInput
    rows = engine.run(items)                       # model work on a batch of items (from many requests)
    result = engine.finish(prepared, rows)          # that request's rows (in its own order) -> its answer

`prepare` returns the items of one request, each with a `num_tokens` (the batcher packs batches by a token
budget), and any context `finish` needs (tokens to show, offsets, per-request options). `run` gets items of
several requests mixed and must return one row per item, in order. `describe` feeds /status.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Item(Protocol):
    """One unit of batched work: a text (or window, sentence, ...) with its token count."""

    num_tokens: int


@dataclass
class Prepared:
    """One request after `Engine.prepare`: its items, and what `Engine.finish` needs to answer it."""

    items: list
    context: Any = None
    num_tokens: int = field(init=False)

    def __post_init__(self):
        self.num_tokens = sum(int(it.num_tokens) for it in self.items)


class Engine(ABC):
    """Text in, batched model work, result out. See the module docstring for the three steps."""

    kind: ClassVar[str] = "engine"   # the task, as a metrics label: "encode", "classify", "ner", ...

    @property
    def name(self) -> str:
        """The served model's name as users see it (OpenAI `model`, /status)."""
        return self.kind

    @abstractmethod
    def prepare(self, inputs: list, **options) -> Prepared:
        """Check one request's inputs and options and tokenize them. Bad input raises bertserve.errors.BadInput
        (or a subclass) naming the problem; nothing here may be slow for a huge input (cut first)."""

    @abstractmethod
    def run(self, items: list) -> Sequence:
        """Model work for a batch of items from any requests: one output row per item, in order."""

    @abstractmethod
    def finish(self, prepared: Prepared, rows: list) -> Any:
        """The answer to one request from its rows (in the order of `prepared.items`)."""

    def describe(self) -> dict:
        """What /status shows about this engine (model, dimension, labels, ...)."""
        return {"kind": self.kind, "name": self.name}

    def __call__(self, inputs: list, **options):
        """Run one request in-process, without a batcher."""
        prepared = self.prepare(inputs, **options)
        rows = list(self.run(prepared.items)) if prepared.items else []
        return self.finish(prepared, rows)
