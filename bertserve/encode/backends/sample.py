"""Real English sentences for measuring backends: gensim's Lee background corpus and its Wikipedia sample.

Both ship inside the gensim package as data files (read by path; gensim itself is never imported). The same
loader feeds the `auto` decision (a few hundred sentences), int8 calibration and benchmarks/encode.py.
"""
from __future__ import annotations

import bz2
import functools
import html
import re

from bertserve.errors import BadInput
from bertserve.evaluation import gensim_file, lee_background_sentences, split_sentences

WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

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


def _wiki_text(page: str) -> str:
    text = html.unescape(html.unescape(page))  # the dump escapes entities twice
    previous = None
    while previous != text:  # templates nest: strip the innermost until none is left
        previous, text = text, _TEMPLATE.sub(" ", text)
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


def lee_sentences() -> tuple[str, ...]:
    return tuple(lee_background_sentences(min_words=3))


@functools.lru_cache(maxsize=None)
def _wiki_pages() -> tuple[str, ...]:
    with bz2.open(gensim_file(WIKI_SAMPLE), "rt", encoding="utf-8") as f:
        return tuple(re.findall(r"<text[^>]*>(.*?)</text>", f.read(), re.S))


@functools.lru_cache(maxsize=None)
def wiki_sentences(limit: int | None = None) -> tuple[str, ...]:
    """Sentences of the Wikipedia sample, in page order; cleaning stops once `limit` are found (it is the slow part)."""
    out: list[str] = []
    for page in _wiki_pages():
        out.extend(split_sentences(_wiki_text(page), 3))
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
