"""Real English sentences for measuring backends: gensim's Lee background corpus and its Wikipedia sample.

Both ship inside the gensim package as data files (read by path; gensim itself is never imported). The same
loader feeds the `auto` decision (a few hundred sentences), int8 calibration and benchmarks/encode.py.
"""
from __future__ import annotations

import bz2
import functools
import html
import importlib.metadata
import re
from pathlib import Path

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


class SampleUnavailable(RuntimeError):
    """The shipped text files are missing (gensim is not installed)."""


def _data_file(suffix: str) -> Path:
    try:
        files = importlib.metadata.files("gensim") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(f.locate())
    raise SampleUnavailable(f"{suffix} not found: install gensim (pip install gensim), whose test data carries "
                            "the real English text bertserve measures backends on")


def _sentences(text: str, min_words: int) -> list[str]:
    out = []
    for paragraph in text.split("\n"):
        for s in _SENTENCE_END.split(paragraph.strip()):
            s = " ".join(s.split())
            if len(s.split()) >= min_words and not s.startswith(("*", "|", "=", "!", "{", "}")):
                out.append(s)
    return out


def _wiki_text(raw: str) -> str:
    pages = re.findall(r"<text[^>]*>(.*?)</text>", raw, re.S)
    text = html.unescape(html.unescape("\n".join(pages)))  # the dump escapes entities twice
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
def wiki_sentences() -> tuple[str, ...]:
    with bz2.open(_data_file(WIKI_SAMPLE), "rt", encoding="utf-8") as f:
        return tuple(_sentences(_wiki_text(f.read()), 3))


def english_sentences(n: int | None = None, *, offset: int = 0) -> list[str]:
    """`n` real sentences of mixed length, the two sources interleaved so any slice mixes news and encyclopedia."""
    lee, wiki = lee_sentences(), wiki_sentences()
    mixed = [s for pair in zip(lee, wiki) for s in pair] + list(lee[len(wiki):]) + list(wiki[len(lee):])
    end = None if n is None else offset + n
    if end is not None and end > len(mixed):
        raise ValueError(f"asked for sentences {offset}..{end}, only {len(mixed)} are available")
    return mixed[offset:end]
