"""Sentence splitting for Chinese, English and mixed text, with character offsets into the original.

Why not a library: pysbd (the usual choice) treats a text as one language, so mixed Chinese/English text
splits badly, and its character spans drift on repeated whitespace. The rules here are few and each is
covered by a hand-written case in tests/test_summarize.py:

- Chinese stops 。！？；… (and ASCII ! ? ; typed in Chinese text) end a sentence wherever they stand;
  closing quotes and brackets right after the stop belong to the sentence they close (“好。” stays whole).
- An ASCII stop . ! ? ends a sentence only before whitespace (or the end, or a Chinese character), so 3.5,
  U.S.A and example.com never split; after a period the next word must look like a sentence start (an
  upper-case letter, a digit, an opening quote or bracket, a Chinese character), and the word before it must
  not be a known abbreviation (Mr., e.g., Fig.), an initial (J. Smith) or an acronym such as U.S. (unless a
  common sentence opener follows it: "in the U.S. The talks...").
- A blank line always ends a sentence (headings, list items); a single line break ends one only after
  Chinese text, where one line is one paragraph, not inside wrapped English prose.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int  # character offsets into the original text: text == original[start:end]
    end: int


CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{CJK}]")
CLOSERS = "”’」』）》】〕〉)]}\"'"
OPENERS = "“‘「『（《【〔〈([{\"'"
_CHINESE_STOP = "。！？；…!?;"  # ASCII forms count as stops only right after Chinese text
_ENGLISH_STOP = ".!?"

# words that take a period without ending the sentence (compared lower-case, without the period)
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e cf al approx ca inc ltd co corp dept univ gov gen col lt sgt
capt cmdr rep sen rev hon no nos vol vols fig figs eq eqs pp p ch sec art ed eds est jan feb mar apr jun jul
aug sep sept oct nov dec mon tue wed thu fri sat sun
""".split())
# a sentence may well begin right after an acronym when one of these follows it
_OPENERS_AFTER_ACRONYM = frozenset("the a an it he she they we i this that these those but and in on at "
                                   "there its his her their our".split())
_ACRONYM = re.compile(r"(?:[A-Za-z]\.){2,}$")
_WORD_BEFORE = re.compile(r"([\w.]+)\.$")
_CANDIDATE = re.compile(r"[\n。！？；…!?;.]")


def is_chinese(text: str, threshold: float = 0.3) -> bool:
    """True when at least `threshold` of the letters are CJK characters."""
    letters = sum(1 for c in text if c.isalpha())
    return letters > 0 and len(_CJK_CHAR.findall(text)) / letters >= threshold


def split_sentences(text: str, limit: int | None = None) -> list[Sentence]:
    """The sentences of `text` in order, stripped of surrounding whitespace, with their offsets. With
    `limit`, splitting stops once more than `limit` sentences are found (a caller refusing long texts need
    not split all of a huge one)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    sentences, start = [], 0
    for end in _boundaries(text):
        _add(sentences, text, start, end)
        start = end
        if limit is not None and len(sentences) > limit:
            return sentences
    _add(sentences, text, start, len(text))
    return sentences


def _add(out: list[Sentence], text: str, start: int, end: int):
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return
    piece = text[start:end]
    if out and not any(c.isalnum() for c in piece):
        # stray punctuation ("!!", a lone closing quote) belongs to the sentence before it
        prev = out[-1]
        out[-1] = Sentence(text[prev.start:end], prev.start, end)
        return
    out.append(Sentence(piece, start, end))


def _boundaries(text: str):
    """Offsets where a sentence ends (exclusive), in increasing order."""
    n, i = len(text), 0
    for m in _CANDIDATE.finditer(text):
        if m.start() < i:
            continue  # inside a run of stops or closers already consumed
        i, c = m.start(), m.group()
        if c == "\n":
            j = i + 1
            while j < n and text[j] in " \t\r":
                j += 1
            if (j < n and text[j] == "\n") or _after_cjk(text, i):  # a blank line, or a line of Chinese
                yield i
            i += 1
        elif c in _CHINESE_STOP and (c not in "!?;" or _after_cjk(text, i)):
            i = _skip_closers(text, _skip_run(text, i, _CHINESE_STOP + _ENGLISH_STOP))
            yield i
        else:  # an ASCII . ! ? (a ; typed in English text is no stop)
            j = _skip_closers(text, _skip_run(text, i, _ENGLISH_STOP))  # "?!" and "..." end together
            if c != ";" and _ends_english_sentence(text, i, j):
                yield j
            i = j if c != ";" else i + 1


def _skip_run(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _skip_closers(text: str, j: int) -> int:
    while j < len(text) and text[j] in CLOSERS:
        j += 1
    return j


def _after_cjk(text: str, i: int) -> bool:
    """Whether the last non-space character before position i is Chinese (or a Chinese stop/closer)."""
    k = i - 1
    while k >= 0 and text[k] in " \t\r":
        k -= 1
    return k >= 0 and (bool(_CJK_CHAR.match(text[k])) or text[k] in "。！？；…，、：”’」』）》】")


def _ends_english_sentence(text: str, stop: int, j: int) -> bool:
    """Whether the ASCII stop at `stop` (its run and closers ending at j) ends a sentence."""
    n = len(text)
    if j >= n:
        return True
    nxt = text[j]
    if _CJK_CHAR.match(nxt):
        # "好.下一句" is a period typed in Chinese text; "美国（U.S.）经济" is an acronym inside it
        return text[stop] != "." or _after_cjk(text, stop)
    if not nxt.isspace():
        return False  # 3.5, U.S.A, example.com, "?!x"
    k = j
    while k < n and text[k].isspace():
        k += 1
    if k >= n:
        return True
    first = text[k]
    if text[stop] != "." or text[stop:j].startswith(".."):
        return not first.islower()  # ! ? and an ellipsis end a sentence unless the text runs on in lower case
    if not (first.isupper() or first.isdigit() or first in OPENERS or _CJK_CHAR.match(first)):
        return False
    m = _WORD_BEFORE.search(text, max(0, stop - 40), stop + 1)
    if m is None:
        return True
    word = m.group(1)
    if word.lower() in ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial: "John F. Kennedy"
    if _ACRONYM.match(word + "."):
        next_word = re.match(r"[A-Za-z]+", text[k:])
        return next_word is not None and next_word.group(0).lower() in _OPENERS_AFTER_ACRONYM
    return True
