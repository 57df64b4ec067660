"""A real English corpus for the serve tests."""
from __future__ import annotations

from bertserve.evaluation import lee_background_sentences


def lee_sentences() -> list[str]:
    """Real English news sentences (gensim's Lee background corpus), 4 words or more, in file order."""
    return lee_background_sentences(min_words=4)
