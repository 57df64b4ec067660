"""The NER engine: texts in, entity spans (character offsets into the text as sent) out.

prepare cuts each text into windows (the batcher packs windows of many requests by token budget), run tags a
batch of windows character by character, finish puts each text's windows back together: a character shared
by two overlapping windows takes the tag from the window in which it lies farther from an edge, so no
entity is cut at a window border unless it is longer than the overlap.
"""
from __future__ import annotations

import numpy as np

from bertserve.engine.contract import Engine, Prepared
from bertserve.errors import BadInput, BadInputType, TooLarge

from .data import spans_from_tags

MAX_CHARS_PER_REQUEST = 1_000_000


def merge_windows(n_chars: int, rows) -> tuple[np.ndarray, np.ndarray]:
    """(tag id, score) per character of one text from its windows' rows (first char, tags, scores); `tags` may
    also be per-character logit rows (the distiller merges teacher logits this way)."""
    width = next((t.shape[1:] for _, t, _ in rows), ())
    tags = np.zeros((n_chars, *width), dtype=next((t.dtype for _, t, _ in rows), np.int64))  # ids, or logits
    scores = np.ones(n_chars, dtype=np.float32)
    margin = np.full(n_chars, -1, dtype=np.int64)  # distance of the chosen window's edge, per character
    for lo, t, s in rows:
        hi = lo + len(t)
        if hi <= lo:
            continue
        pos = np.arange(lo, hi)
        left = pos - lo if lo > 0 else np.full(len(pos), n_chars)       # the text's own ends are no edges
        right = hi - 1 - pos if hi < n_chars else np.full(len(pos), n_chars)
        m = np.minimum(left, right)
        better = m > margin[lo:hi]
        tags[lo:hi][better], scores[lo:hi][better], margin[lo:hi][better] = t[better], s[better], m[better]
    return tags, scores


def entities_of(text: str, tag_names: list[str], tags: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Spans with their text, label, offsets and score (mean per-character probability of the tags)."""
    out = []
    for start, end, label in spans_from_tags([tag_names[i] for i in tags]):
        out.append({"text": text[start:end], "label": label, "start": start, "end": end,
                    "score": round(float(np.mean(scores[start:end])), 4)})
    return out


def check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise BadInputType(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise BadInput("texts is empty")
    total = 0
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadInputType(f"texts[{i}] must be a string, got {type(t).__name__}")
        total += len(t)
    if total > MAX_CHARS_PER_REQUEST:
        raise TooLarge(f"{total} characters in one request; at most {MAX_CHARS_PER_REQUEST}")
    return list(texts)


class NerEngine(Engine):
    kind = "ner"

    def __init__(self, tagger, name: str | None = None):
        self.tagger = tagger
        self._name = name

    @property
    def name(self) -> str:
        from pathlib import Path

        return self._name or Path(self.tagger.path).resolve().name

    def prepare(self, inputs, **options) -> Prepared:
        if options:
            raise BadInput(f"unknown option(s) for ner: {sorted(options)}")
        texts = check_texts(inputs)
        items, per_text = [], []
        for i, text in enumerate(texts):
            windows = self.tagger.windows(text) if text.strip() else []
            for w in windows:
                w.text = i
            per_text.append(len(windows))
            items += windows
        return Prepared(items, context=(texts, per_text))

    def run(self, items):
        return self.tagger.char_tags(items)

    def finish(self, prepared: Prepared, rows) -> list[list[dict]]:
        texts, per_text = prepared.context
        out, k = [], 0
        for text, n in zip(texts, per_text):
            tags, scores = merge_windows(len(text), rows[k:k + n])
            out.append(entities_of(text, self.tagger.tag_names, tags, scores))
            k += n
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "model": self.tagger.kind, "labels": self.tagger.labels,
                "max_seq_len": self.tagger.max_seq_len}
