"""Real English sentences for measuring backends: gensim's Lee background corpus and its Wikipedia sample.

Both ship inside the gensim package as data files (read by path; gensim itself is never imported). The same
loader feeds the `auto` decision (a few hundred sentences), int8 calibration and benchmarks/encode.py.
"""
from __future__ import annotations

import bz2
import functools
import html
import importlib.util
import re
from pathlib import Path

from bertserve.errors import BadInput, Unavailable

LEE_BACKGROUND = "gensim/test/test_data/lee_background.cor"
WIKI_SAMPLE = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
# Wiki markup removed before splitting: templates, references, tables, files, HTML comments and tags.
_MARKUP = [
    (re.compile(r"<!--.*?-->", re.S), " "),
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), " "),
    (re.compile(r"\{\|.*?\|\}", re.S), " "),
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]"), " "),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ?([^\]]*)\]"), r"\1"),
    (re.compile(r"<[^>]+>"), " "),
    (re.compile(r"'{2,}"), ""),
]
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")


class SampleUnavailable(Unavailable):
    """The shipped text files are missing (gensim is not installed)."""


def _data_file(relative: str) -> Path:
    spec = importlib.util.find_spec("gensim")  # finds the package folder without importing gensim
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent.parent / relative
        if path.is_file():
            return path
    raise SampleUnavailable(f"{relative} not found: install gensim (pip install gensim), whose test data carries "
                            "the real English text bertserve measures backends on")


def _sentences(text: str, min_words: int) -> list[str]:
    out = []
    for paragraph in text.split("\n"):
        for s in _SENTENCE_END.split(paragraph.strip()):
            s = " ".join(s.split())
            if len(s.split()) >= min_words and not s.startswith(("*", "|", "=", "!", "{", "}")):
                out.append(s)
    return out


def _wiki_text(page: str) -> str:
    text = html.unescape(html.unescape(page))  # the dump escapes entities twice
    previous = None
    while previous != text:  # templates nest: strip the innermost until none is left
        previous, text = text, _TEMPLATE.sub(" ", text)
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


@functools.lru_cache(maxsize=None)
def lee_sentences() -> tuple[str, ...]:
    return tuple(_sentences(_data_file(LEE_BACKGROUND).read_text(encoding="utf-8", errors="replace"), 3))


@functools.lru_cache(maxsize=None)
def _wiki_pages() -> tuple[str, ...]:
    with bz2.open(_data_file(WIKI_SAMPLE), "rt", encoding="utf-8") as f:
        return tuple(re.findall(r"<text[^>]*>(.*?)</text>", f.read(), re.S))


@functools.lru_cache(maxsize=None)
def wiki_sentences(limit: int | None = None) -> tuple[str, ...]:
    """Sentences of the Wikipedia sample, in page order; cleaning stops once `limit` are found (it is the slow part)."""
    out: list[str] = []
    for page in _wiki_pages():
        out.extend(_sentences(_wiki_text(page), 3))
        if limit is not None and len(out) >= limit:
            return tuple(out[:limit])
    return tuple(out)


def english_sentences(n: int | None = None, *, offset: int = 0) -> list[str]:
    """`n` real sentences of mixed length, the two sources interleaved so any slice mixes news and encyclopedia."""
    lee = lee_sentences()
    wiki = wiki_sentences(None if n is None else max(0, offset + n - len(lee)) + (offset + n) // 2 + 1)
    mixed = [s for pair in zip(lee, wiki) for s in pair] + list(lee[len(wiki):]) + list(wiki[len(lee):])
    end = None if n is None else offset + n
    if end is not None and end > len(mixed):
        raise BadInput(f"asked for sentences {offset}..{end}, only {len(mixed)} are available")
    return mixed[offset:end]
