"""Does the model's vocabulary cover a text? Mostly-unknown tokens mean the vectors say little about it.

The default English model turns most Chinese characters into [UNK], and the vectors of unrelated Chinese
sentences then sit at cosine 0.5-0.7 from each other with no sign of trouble. A batch with texts whose
content tokens are over `UNKNOWN_SHARE` unknown is reported once: one Python warning (UnknownTokensWarning)
and one log line, both naming a registered model that covers the text's script.
"""
from __future__ import annotations

import logging
import sys
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

log = logging.getLogger("bertserve.models")

UNKNOWN_SHARE = 0.30  # of a text's content tokens; above it the text counts as not covered

# The first word of a character's Unicode name -> the language a model would need for it.
_SCRIPT_LANGUAGE = {"CJK": "zh", "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "CYRILLIC": "ru",
                    "ARABIC": "ar", "HEBREW": "he", "DEVANAGARI": "hi", "THAI": "th", "GREEK": "el"}


class UnknownTokensWarning(UserWarning):
    """Texts that the model's vocabulary mostly does not know."""


def unknown_share(ids: list[int], content_tokens: int, unk_id: int | None) -> float:
    if unk_id is None or content_tokens <= 0:
        return 0.0
    return sum(1 for i in ids if i == unk_id) / content_tokens


def text_language(text: str) -> str:
    """The language a text's non-Latin letters point to ("zh" for Han characters), else "multilingual"."""
    scripts = Counter()
    for ch in text:
        if ch.isalpha() and ord(ch) > 0x24F:
            word = unicodedata.name(ch, "").split(" ", 1)[0]
            if word in _SCRIPT_LANGUAGE:
                scripts[_SCRIPT_LANGUAGE[word]] += 1
    return scripts.most_common(1)[0][0] if scripts else "multilingual"


def report_uncovered(texts: list[str], shares: list[float], model_name: str) -> int:
    """Warn once about the texts over UNKNOWN_SHARE; returns how many there were."""
    flagged = [i for i, share in enumerate(shares) if share > UNKNOWN_SHARE]
    if not flagged:
        return 0
    from bertserve.models.registry import suggest_for

    first = flagged[0]
    sample = texts[first] if isinstance(texts[first], str) else " ".join(texts[first])
    language = text_language(sample)
    better = suggest_for(language, exclude=model_name)
    advice = f"; model {better} covers {language} text (Encoder('{better}'), --model {better})" if better else ""
    message = (f"{len(flagged)} of {len(texts)} texts are mostly unknown tokens for model {model_name} "
               f"(texts[{first}]: {shares[first]:.0%} [UNK]){advice}")
    warnings.warn(message, UnknownTokensWarning, stacklevel=_caller_level())
    log.warning(message)
    return len(flagged)


def _caller_level() -> int:
    """The stack level of the first frame outside bertserve, so the warning points at the user's line."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level
