"""Extractive summaries from sentence vectors: rank sentences by centrality, pick them with MMR.

    summary = summarize(encoder, text, num_sentences=3)      # any object with encode(texts) -> (n, d)
    for s in summary.sentences: print(s.start, s.end, s.score, s.text)

Centrality is read off the cosine graph of the sentences (`method`):
- "textrank": PageRank over the graph weighted by positive cosine similarity (Mihalcea and Tarau's TextRank
  with embeddings in place of word overlap);
- "lexrank": PageRank over the graph with an edge wherever the similarity is above the document's mean
  pairwise similarity (Erkan and Radev's LexRank threshold; sentence vectors have a high baseline cosine, so
  a fixed 0.1 as for TF-IDF would connect everything);
- "centroid": cosine to the document vector (Radev's centroid method).
Sentences are then taken greedily by maximal marginal relevance: relevance (the centrality, scaled to 0..1)
times (1 - diversity) minus diversity times the highest similarity to a sentence already taken, so a
summary does not say the same thing twice. The chosen sentences come back in document order.

The two steps a server needs apart (`prepare_summary` -> texts to embed -> `finish_summary`) are public, so
the HTTP routes embed through the server's batcher while Python callers just call `summarize`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from bertserve.errors import BadInput, BadInputType
from bertserve.tasks.summarize.document import DEFAULT_WINDOW_TOKENS, Document, encode, mmr, window_tokens

METHODS = ("textrank", "lexrank", "centroid", "blend")
DEFAULT_RATIO = 0.2
DAMPING = 0.85
BLEND_TEXTRANK = 0.5  # "blend": the centroid's standard score plus this much of TextRank's


@dataclass(frozen=True)
class SummaryOptions:
    method: str = "centroid"
    ratio: float | None = None          # fraction of the sentences to keep (default 0.2 when nothing is set)
    num_sentences: int | None = None    # exactly this many (fewer if the document is shorter)
    max_chars: int | None = None        # a cap on the summary's length in characters (whole sentences only)
    diversity: float = 0.3              # MMR weight of redundancy, 0 (none) .. 1 (only novelty)
    position: float = 0.15              # weight of the prior for the document's opening sentences (0: none)

    def __post_init__(self):
        if self.method not in METHODS:
            raise BadInput(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.ratio is not None and self.num_sentences is not None:
            raise BadInput("give ratio or num_sentences, not both")
        if self.ratio is not None and (not _is_number(self.ratio) or not 0 < self.ratio <= 1):
            raise BadInput(f"ratio must be a number in (0, 1], got {self.ratio!r}")
        for name in ("num_sentences", "max_chars"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BadInput(f"{name} must be a positive integer, got {value!r}")
        if not _is_number(self.diversity) or not 0 <= self.diversity <= 1:
            raise BadInput(f"diversity must be a number in [0, 1], got {self.diversity!r}")
        if not _is_number(self.position) or not 0 <= self.position <= 10:
            raise BadInput(f"position must be a number in [0, 10], got {self.position!r}")

    def budget(self, n: int) -> int:
        """How many sentences to pick out of n (max_chars may stop it earlier)."""
        if self.num_sentences is not None:
            return min(n, self.num_sentences)
        if self.ratio is None and self.max_chars is not None:
            return n
        return min(n, max(1, math.ceil((self.ratio or DEFAULT_RATIO) * n)))


@dataclass
class SummarySentence:
    index: int    # position among the document's sentences
    text: str
    start: int    # character offsets into the input text
    end: int
    score: float  # the method's centrality score


@dataclass
class Summary:
    sentences: list[SummarySentence]   # the chosen ones, in document order
    num_sentences: int                 # how many the document has
    method: str
    chinese: bool = field(repr=False, default=False)

    @property
    def text(self) -> str:
        return ("" if self.chinese else " ").join(s.text for s in self.sentences)

    def to_dict(self) -> dict:
        return {"summary": self.text, "sentences": [asdict(s) for s in self.sentences],
                "num_sentences": self.num_sentences, "method": self.method}


@dataclass
class SummaryJob:
    """A request after splitting: the texts to embed, and what ranking them needs."""
    document: Document
    options: SummaryOptions

    @property
    def texts(self) -> list[str]:
        return self.document.pieces


def prepare_summary(text, window: int = DEFAULT_WINDOW_TOKENS, **options) -> SummaryJob:
    opts = _options(options)
    document = Document.split(text, window)
    if len(document.sentences) < 2:
        raise BadInput("text has no sentence boundary (one sentence): nothing to choose from; "
                       "send a text of two or more sentences")
    return SummaryJob(document, opts)


def finish_summary(job: SummaryJob, piece_vectors: np.ndarray) -> Summary:
    doc, opts = job.document, job.options
    vectors = doc.sentence_vectors(np.asarray(piece_vectors, dtype=np.float32))
    scores, chosen = choose(vectors, doc.vector(vectors), opts, [len(s.text) for s in doc.sentences])
    picked = [SummarySentence(i, doc.sentences[i].text, doc.sentences[i].start, doc.sentences[i].end,
                              float(scores[i])) for i in sorted(chosen)]
    return Summary(picked, len(doc.sentences), opts.method, doc.chinese)


def choose(vectors: np.ndarray, doc_vector: np.ndarray, opts: SummaryOptions, lengths: list[int]):
    """(each sentence's centrality score, the indices chosen) from unit sentence vectors."""
    scores = centrality(vectors, opts.method, doc_vector)
    ranked = _standard(scores) + opts.position * _standard(-np.log1p(np.arange(len(scores))))
    span = ranked.max() - ranked.min()  # relevance on 0..1 so that `diversity` means the same for every method
    relevance = (ranked - ranked.min()) / span if span > 0 else np.ones_like(ranked)
    chosen = mmr(vectors, relevance, opts.budget(len(vectors)), opts.diversity, lengths=lengths,
                 max_chars=opts.max_chars)
    return scores, chosen


def summarize(encoder, text, **options) -> Summary:
    """The extractive summary of `text`; options as SummaryOptions (method, ratio, num_sentences, ...)."""
    job = prepare_summary(text, window_tokens(encoder), **options)
    return finish_summary(job, encode(encoder, job.texts))


def centrality(vectors: np.ndarray, method: str, doc_vector: np.ndarray | None = None) -> np.ndarray:
    """One score per sentence (higher: more central) from unit sentence vectors."""
    if method == "centroid":
        centre = doc_vector if doc_vector is not None else vectors.mean(0)
        return vectors @ (centre / (np.linalg.norm(centre) or 1.0))
    if method == "blend":
        return (_standard(centrality(vectors, "centroid", doc_vector))
                + BLEND_TEXTRANK * _standard(centrality(vectors, "textrank")))
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, 0.0)
    if method == "textrank":
        weights = np.clip(sim, 0.0, None)
    elif method == "lexrank":
        n = len(sim)
        threshold = sim.sum() / max(1, n * (n - 1))
        weights = (sim > threshold).astype(np.float32)
    else:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return pagerank(weights)


def pagerank(weights: np.ndarray, damping: float = DAMPING, iterations: int = 100, tol: float = 1e-8) -> np.ndarray:
    """Stationary scores of a random walk on a weighted graph (a node with no edges jumps anywhere)."""
    n = len(weights)
    out = weights.sum(1, keepdims=True)
    transition = np.where(out > 0, weights / np.where(out > 0, out, 1), 1.0 / n)
    scores = np.full(n, 1.0 / n)
    for _ in range(iterations):
        new = (1 - damping) / n + damping * (scores @ transition)
        if np.abs(new - scores).sum() < tol:
            return new
        scores = new
    return scores


def _standard(x: np.ndarray) -> np.ndarray:
    """x in standard deviations from its mean (all zero when x is constant), so that scores on different
    scales (cosines, PageRank probabilities, a position prior) can be added."""
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def _options(options: dict) -> SummaryOptions:
    try:
        return SummaryOptions(**options)
    except TypeError as e:
        raise BadInputType(f"unknown summary option: {e}") from e


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.floating)) and not isinstance(x, bool) and math.isfinite(x)
