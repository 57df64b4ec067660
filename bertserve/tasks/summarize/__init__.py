"""Extractive summaries and keywords from sentence vectors, for Chinese and English text.

    from bertserve import Encoder
    from bertserve.tasks.summarize import summarize, keywords
    summarize(Encoder(), text, num_sentences=3).text
    keywords(Encoder(), text, top_n=5)

Any object with `encode(texts) -> (n, d) array` serves as the encoder: an Encoder in-process, a Client of a
running server, or the server's own batcher (see routes.py).
"""
from bertserve.tasks.summarize.keywords import Keyword, KeywordOptions, keywords
from bertserve.tasks.summarize.sentences import Sentence, split_sentences
from bertserve.tasks.summarize.summarize import METHODS, Summary, SummaryOptions, SummarySentence, summarize

__all__ = ["METHODS", "Keyword", "KeywordOptions", "Sentence", "Summary", "SummaryOptions", "SummarySentence",
           "keywords", "split_sentences", "summarize"]
