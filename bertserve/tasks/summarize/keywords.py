"""Keywords and keyphrases ranked against the document vector, with MMR diversity (as KeyBERT does).

    keywords(encoder, text, top_n=5)   # -> [Keyword(text='solar power', score=0.71, count=3), ...]

Candidates: for Chinese, jieba's words whose part of speech can name a topic (nouns, names, places,
organisations, verbal nouns, verbs, idioms, foreign words), two characters or more; for English, word
n-grams (1..max_ngram) inside a sentence that neither contain a stop word (scikit-learn's English list) nor
are only digits. Each candidate is embedded on its own, and scored by cosine to the document vector (built
from the sentence vectors, so no text is truncated). With diversity d, the next keyword maximises
(1 - d) * similarity to the document - d * the highest similarity to a keyword already chosen.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from bertserve.errors import BadInput, BadInputType, Unavailable
from bertserve.tasks.summarize.document import DEFAULT_WINDOW_TOKENS, Document, encode, mmr, window_tokens
from bertserve.tasks.summarize.summarize import _is_number

# jieba part-of-speech tags that can name a topic (jieba.posseg's ICTCLAS-style set)
CHINESE_POS = frozenset({"n", "nr", "ns", "nt", "nz", "nrt", "nrfg", "ng", "vn", "v", "l", "i", "j", "eng", "an"})
_ENGLISH_WORD = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?")
MAX_CANDIDATES_LIMIT = 5000


@dataclass(frozen=True)
class KeywordOptions:
    top_n: int = 10
    diversity: float = 0.3       # MMR weight of redundancy, 0 (pure similarity) .. 1
    max_ngram: int = 2           # English phrases of up to this many words (Chinese: jieba words)
    max_candidates: int = 500    # the most frequent candidates are embedded; bounds the cost of a long text

    def __post_init__(self):
        for name, top in (("top_n", 1000), ("max_ngram", 5), ("max_candidates", MAX_CANDIDATES_LIMIT)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise BadInput(f"{name} must be an integer in 1..{top}, got {value!r}")
        if not _is_number(self.diversity) or not 0 <= self.diversity <= 1:
            raise BadInput(f"diversity must be a number in [0, 1], got {self.diversity!r}")


@dataclass
class Keyword:
    text: str
    score: float   # cosine similarity to the document
    count: int     # occurrences in the text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KeywordJob:
    document: Document
    candidates: list[tuple[str, int]]   # (phrase, count), most frequent first
    options: KeywordOptions

    @property
    def texts(self) -> list[str]:
        """The document's sentence pieces, then the candidates."""
        return self.document.pieces + [c for c, _ in self.candidates]


def prepare_keywords(text, window: int = DEFAULT_WINDOW_TOKENS, **options) -> KeywordJob:
    try:
        opts = KeywordOptions(**options)
    except TypeError as e:
        raise BadInputType(f"unknown keyword option: {e}") from e
    document = Document.split(text, window)
    found = chinese_candidates(text) if document.chinese else english_candidates(document, opts.max_ngram)
    if not found:
        raise BadInput("text has no candidate keywords (only stop words, digits or punctuation)")
    return KeywordJob(document, found[:opts.max_candidates], opts)


def finish_keywords(job: KeywordJob, vectors: np.ndarray) -> list[Keyword]:
    vectors = np.asarray(vectors, dtype=np.float32)
    n_pieces = len(job.document.pieces)
    doc = job.document.vector(job.document.sentence_vectors(vectors[:n_pieces]))
    cand = vectors[n_pieces:]
    cand = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
    similarity = cand @ doc
    chosen = mmr(cand, similarity, job.options.top_n, job.options.diversity)
    chosen.sort(key=lambda i: -similarity[i])  # MMR decides which; they are shown best first
    return [Keyword(job.candidates[i][0], float(similarity[i]), job.candidates[i][1]) for i in chosen]


def keywords(encoder, text, **options) -> list[Keyword]:
    """The `top_n` keywords of `text`, best first; options as KeywordOptions (top_n, diversity, ...)."""
    job = prepare_keywords(text, window_tokens(encoder), **options)
    return finish_keywords(job, encode(encoder, job.texts))


def english_candidates(document: Document, max_ngram: int) -> list[tuple[str, int]]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    counts: Counter = Counter()
    for sentence in document.sentences:
        run: list[str] = []
        for word in _ENGLISH_WORD.findall(sentence.text.lower()) + [""]:
            if word and word not in ENGLISH_STOP_WORDS and not word.isdigit():
                run.append(word)
                continue
            for n in range(1, max_ngram + 1):  # a stop word, a number or the end closes the run
                for i in range(len(run) - n + 1):
                    counts[" ".join(run[i:i + n])] += 1
            run = []
    return _by_frequency(counts)


def chinese_candidates(text: str) -> list[tuple[str, int]]:
    posseg = _jieba_posseg()
    counts: Counter = Counter()
    for pair in posseg.cut(text):
        word, flag = pair.word.strip(), pair.flag
        if flag in CHINESE_POS and len(word) >= 2 and not word.isdigit():
            counts[word.lower() if flag == "eng" else word] += 1
    return _by_frequency(counts)


def _by_frequency(counts: Counter) -> list[tuple[str, int]]:
    # most frequent first; Counter keeps first-seen order among equals, so ties go to the earlier phrase
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _jieba_posseg():
    try:
        import jieba
        import jieba.posseg
    except ImportError as e:
        raise Unavailable("Chinese keywords need jieba (pip install jieba)") from e
    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading messages are not the caller's business
    return jieba.posseg
