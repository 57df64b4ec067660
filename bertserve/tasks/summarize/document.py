"""A document as its sentences, the pieces the encoder embeds, and vectors for sentences and the whole.

The whole document is never one encoder input: a news article is longer than the model's window, and
truncating it would silently drop its end. Each sentence is embedded on its own, a sentence longer than the
window is cut into window-sized pieces (their vectors averaged, weighted by length), and the document vector
is the length-weighted mean of its sentence vectors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertserve.errors import BadInput, BadInputType, TooLarge
from bertserve.tasks.summarize.sentences import Sentence, is_chinese, split_sentences

# The sentence graph is dense (n x n floats): 4,000 sentences (a short book) is 64 MB, about where an HTTP
# request should stop. Longer texts are refused, not cut.
MAX_SENTENCES = 4000
DEFAULT_WINDOW_TOKENS = 256


def window_tokens(encoder) -> int:
    """The encoder's window in tokens, when it says (Encoder.max_seq_len, or its config's)."""
    for owner in (encoder, getattr(encoder, "config", None)):
        value = getattr(owner, "max_seq_len", None)
        if isinstance(value, int) and value > 2:
            return value
    return DEFAULT_WINDOW_TOKENS


def encode(encoder, texts: list[str]) -> np.ndarray:
    """`encoder.encode(texts)` as a float32 (n, d) array, whatever the encoder-like object returns."""
    return checked_vectors(encoder.encode(texts), len(texts))


def checked_vectors(vectors, n: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise BadInput(f"the encoder must give one vector per text (got shape {vectors.shape} for {n} "
                       "texts); a server that pools per token (pooling NONE) cannot summarize")
    return vectors


@dataclass
class Document:
    text: str
    sentences: list[Sentence]
    chinese: bool
    pieces: list[str]         # what the encoder embeds for the sentences, in order
    piece_owner: np.ndarray   # sentence index of each piece
    piece_chars: int          # the longest piece, in characters

    @classmethod
    def split(cls, text, window: int = DEFAULT_WINDOW_TOKENS) -> "Document":
        if not isinstance(text, str):
            raise BadInputType(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise BadInput("text is empty")
        sentences = split_sentences(text, limit=MAX_SENTENCES)
        if len(sentences) > MAX_SENTENCES:
            raise TooLarge(f"text has more than {MAX_SENTENCES} sentences, the most accepted (send it in parts)")
        chinese = is_chinese(text)
        # a Chinese character can be a token of its own; English averages 4+ characters a token
        limit = max(16, (window - 2) if chinese else 3 * (window - 2))
        pieces, owner = [], []
        for k, s in enumerate(sentences):
            for piece in _cut(s.text, limit):
                pieces.append(piece)
                owner.append(k)
        return cls(text, sentences, chinese, pieces, np.asarray(owner, dtype=np.int64), limit)

    def sentence_vectors(self, piece_vectors: np.ndarray) -> np.ndarray:
        """Unit vectors, one per sentence, from the pieces' vectors."""
        weights = np.asarray([len(p) for p in self.pieces], dtype=np.float32)
        out = np.zeros((len(self.sentences), piece_vectors.shape[1]), dtype=np.float32)
        np.add.at(out, self.piece_owner, piece_vectors * weights[:, None])
        return _unit(out)

    def vector(self, sentence_vectors: np.ndarray) -> np.ndarray:
        """The document's unit vector: its sentences' vectors weighted by their length."""
        weights = np.asarray([len(s.text) for s in self.sentences], dtype=np.float32)
        return _unit((weights[:, None] * sentence_vectors).sum(0, keepdims=True))[0]


def mmr(vectors: np.ndarray, relevance: np.ndarray, k: int, diversity: float, *, lengths=None,
        max_chars: int | None = None) -> list[int]:
    """Up to k indices picked greedily by maximal marginal relevance: each next one maximises
    (1 - diversity) * relevance - diversity * (its highest cosine to one already picked). With `max_chars`,
    an item whose length would overflow it is passed over for a shorter one further down."""
    chosen: list[int] = []
    redundancy = np.zeros(len(relevance))
    available = np.ones(len(relevance), dtype=bool)
    used = 0
    while len(chosen) < k and available.any():
        gain = np.where(available, (1 - diversity) * relevance - diversity * redundancy, -np.inf)
        best = int(np.argmax(gain))
        available[best] = False
        if max_chars is not None:
            if used + lengths[best] > max_chars:
                continue
            used += lengths[best]
        chosen.append(best)
        redundancy = np.maximum(redundancy, vectors @ vectors[best]) if chosen[1:] else vectors @ vectors[best]
    return chosen


def _cut(sentence: str, limit: int) -> list[str]:
    """`sentence` in pieces of at most `limit` characters, cut at a space or comma where one is near."""
    pieces = []
    while len(sentence) > limit:
        cut = max(sentence.rfind(sep, limit // 2, limit) for sep in (" ", ",", "，", "、", "；", ";"))
        cut = cut + 1 if cut > 0 else limit
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        pieces.append(sentence)
    return pieces


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)
