"""A collection's keyword index: BM25 over its texts, kept in step with every add, delete and update.

bm25s scores a query by summing precomputed per-(term, document) scores held as a sparse CSC matrix;
it builds that matrix once for a fixed corpus. A collection changes all the time, so this module keeps
the raw material (term frequencies and document lengths, appended as items arrive) and lays the bm25s
score matrix out again, vectorized, on the first search after a change. Scores are therefore exactly
those of a bm25s index built from scratch over the live texts (the tests check this), and the query
itself runs in bm25s's own scorer.

The index is a cache of the texts in store.sqlite, like the Faiss file: a snapshot `bm25-<gen>.npz`
whose generation, sha256 and format version live in the store's state. On open, items added after the
snapshot are tokenized again and deleted ones dropped (by comparing with the live internal ids), so
an acknowledged add is found by BM25 after a kill -9; a missing or damaged snapshot is rebuilt from the
stored texts.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bertserve.errors import BadInput

log = logging.getLogger("bertserve.search")

BM25_FORMAT = 1
# bm25s's defaults (Lucene's variant of BM25)
K1, B = 1.5, 0.75

# CJK ideographs (with extensions A and B-F and compatibility ideographs): the runs a segmenter splits
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
WORDS_AND_CJK = re.compile(f"([{CJK}]+)|((?:(?![{CJK}])\\w){{2,}})")
# bm25s's default token pattern: words of two or more word characters
WORDS = re.compile(r"(?u)\b\w\w+\b")
SEGMENTERS = ("rjieba", "jieba")
STOPWORD_LISTS = ("en", "zh")


@dataclass(frozen=True)
class Analyzer:
    """How a text becomes BM25 terms: lowercase, split, drop stop words, stem.

    `segmenter` splits runs of Chinese characters into words (rjieba: jieba's algorithm in Rust; jieba:
    the Python original); other text is split into words of two or more letters or digits, as bm25s
    does. Without a segmenter the whole text is split the bm25s way (a Chinese run stays one token).
    `stemmer` is a Snowball algorithm name for PyStemmer ("english", "german", ...); `stopwords` names
    bm25s's lists ("en", "zh"). `bigrams` adds every pair of adjacent Chinese characters beside the
    words: a paragraph and a sentence taken from it share many pairs that the segmenter cuts apart
    differently (docs/hybrid-search.md has the figures); pairs are not stop-filtered.
    """
    segmenter: str | None = "rjieba"
    stemmer: str | None = "english"
    stopwords: tuple[str, ...] = ("en", "zh")
    lowercase: bool = True
    bigrams: bool = False

    def __post_init__(self):
        if self.segmenter is not None and self.segmenter not in SEGMENTERS:
            raise BadInput(f"segmenter must be one of {SEGMENTERS} or None, got {self.segmenter!r}")
        object.__setattr__(self, "stopwords", tuple(self.stopwords))
        for name in self.stopwords:
            if name not in STOPWORD_LISTS:
                raise BadInput(f"stop word lists are {sorted(STOPWORD_LISTS)}, got {name!r}")
        if self.stemmer is not None:
            import Stemmer
            if self.stemmer not in Stemmer.algorithms():
                raise BadInput(f"unknown stemmer {self.stemmer!r}; PyStemmer has {Stemmer.algorithms()}")

    @classmethod
    def of(cls, spec) -> "Analyzer":
        """An analyzer from a preset name, a dict of fields, or an Analyzer."""
        if isinstance(spec, Analyzer):
            return spec
        if isinstance(spec, str):
            if spec not in PRESETS:
                raise BadInput(f"analyzer must be one of {sorted(PRESETS)} or a dict of fields, got {spec!r}")
            return PRESETS[spec]
        if isinstance(spec, dict):
            unknown = set(spec) - {"segmenter", "stemmer", "stopwords", "lowercase", "bigrams"}
            if unknown:
                raise BadInput(f"unknown analyzer fields {sorted(unknown)}")
            return cls(**spec)
        raise BadInput(f"analyzer must be a preset name or a dict, got {type(spec).__name__}")

    def to_dict(self) -> dict:
        out = {**asdict(self), "stopwords": list(self.stopwords)}
        if not self.bigrams:  # recorded only when on: collections made before the field compare equal
            del out["bigrams"]
        return out

    def __call__(self, text: str) -> list[str]:
        return _tokenizer(self)(text)


PRESETS = {
    # Chinese runs segmented (words and character pairs), other words stemmed: mixed Chinese and English text
    "standard": Analyzer(bigrams=True),
    # exactly bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer("english"))
    "english": Analyzer(segmenter=None, stemmer="english", stopwords=("en",)),
    "chinese": Analyzer(segmenter="rjieba", stemmer=None, stopwords=("zh", "en"), bigrams=True),
    "chinese-jieba": Analyzer(segmenter="jieba", stemmer=None, stopwords=("zh", "en"), bigrams=True),
}


def _stopword_lists():
    from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN
    return {"en": STOPWORDS_EN, "zh": STOPWORDS_CHINESE}


@lru_cache(maxsize=None)
def _tokenizer(analyzer: Analyzer):
    lists = _stopword_lists()
    stop = frozenset(w for name in analyzer.stopwords for w in lists[name])
    segment = _segmenter(analyzer.segmenter)
    stems: dict[str, str] = {}
    stem = None
    if analyzer.stemmer is not None:
        import Stemmer
        stem = Stemmer.Stemmer(analyzer.stemmer).stemWord

    def words(text: str) -> list[str]:
        if analyzer.lowercase:
            text = text.lower()
        pairs = []
        if segment is None and not analyzer.bigrams:
            found = WORDS.findall(text)
        else:
            found = []
            for run, word in WORDS_AND_CJK.findall(text):
                if not run:
                    found.append(word)
                    continue
                if segment is not None:
                    found += [w for w in segment(run) if w.strip()]
                if analyzer.bigrams:
                    pairs += [run[i:i + 2] for i in range(len(run) - 1)] or ([] if segment else [run])
        found = [w for w in found if w not in stop]
        if stem is None:
            return found + pairs
        out = pairs  # the pairs, then the stemmed words (order does not matter to BM25)
        for w in found:  # stems are cached: a corpus has far fewer distinct words than tokens
            s = stems.get(w)
            if s is None:
                s = stems[w] = stem(w)
            out.append(s)
        return out

    return words


def _segmenter(name):
    if name is None:
        return None
    if name == "rjieba":
        import rjieba
        return rjieba.cut
    import jieba
    jieba.setLogLevel(logging.WARNING)
    return jieba.lcut


@dataclass(frozen=True)
class BM25Config:
    """What a collection records about its keyword index (collection.json, key "bm25")."""
    analyzer: Analyzer
    k1: float = K1
    b: float = B

    @classmethod
    def of(cls, spec) -> "BM25Config | None":
        """From create's `bm25=` argument: True / a preset name / an analyzer dict / a full config dict;
        False or None turn the keyword index off."""
        if spec is None or spec is False:
            return None
        if spec is True:
            spec = "standard"
        if isinstance(spec, dict) and "analyzer" in spec:
            extra = set(spec) - {"analyzer", "k1", "b"}
            if extra:
                raise BadInput(f"unknown bm25 settings {sorted(extra)}")
            k1, b = spec.get("k1", K1), spec.get("b", B)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (k1, b)) or k1 < 0 \
                    or not 0 <= b <= 1:
                raise BadInput(f"bm25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}")
            return cls(Analyzer.of(spec["analyzer"]), float(k1), float(b))
        return cls(Analyzer.of(spec))

    def to_dict(self) -> dict:
        return {"analyzer": self.analyzer.to_dict(), "k1": self.k1, "b": self.b}


class BM25Index:
    """Term statistics of the live texts, and the bm25s scorer over them.

    Documents are numbered by position in arrival order; `doc_iids[pos]` is the collection's internal
    id. Postings are kept as three parallel arrays (term, position, tf) plus chunks not yet merged.
    """

    def __init__(self, config: BM25Config):
        self.config = config
        self.analyze = config.analyzer
        self.vocab: dict[str, int] = {}
        self.doc_iids = np.empty(0, np.int64)
        self.doc_len = np.empty(0, np.int32)
        self.alive = np.empty(0, bool)
        self.terms = np.empty(0, np.int32)
        self.docs = np.empty(0, np.int32)
        self.tfs = np.empty(0, np.float32)
        self._pending: list[tuple] = []  # (iids, lengths, terms, local positions, tfs) of recent adds
        self._scorer = None  # bm25s.BM25 over the live documents; None after any change

    # ---- changes -----------------------------------------------------------------------------------
    def add(self, iids: np.ndarray, texts) -> None:
        """Index the texts of newly added items (None texts are skipped)."""
        keep = [(int(i), t) for i, t in zip(iids, texts) if t is not None]
        if not keep:
            return
        terms, docs, tfs, lengths = [], [], [], []
        for pos, (_, text) in enumerate(keep):
            tokens = self.analyze(text)
            lengths.append(len(tokens))
            for word, tf in Counter(tokens).items():
                tid = self.vocab.get(word)
                if tid is None:
                    tid = self.vocab[word] = len(self.vocab)
                terms.append(tid)
                docs.append(pos)
                tfs.append(tf)
        self._pending.append((np.array([i for i, _ in keep], np.int64), np.array(lengths, np.int32),
                              np.array(terms, np.int32), np.array(docs, np.int32), np.array(tfs, np.float32)))
        self._scorer = None

    def remove(self, iids: np.ndarray) -> None:
        self._merge()
        if len(iids) == 0 or len(self.doc_iids) == 0:
            return
        pos = np.searchsorted(self.doc_iids, iids)
        ok = (pos < len(self.doc_iids)) & (self.doc_iids[np.minimum(pos, len(self.doc_iids) - 1)] == iids)
        if ok.any():
            self.alive[pos[ok]] = False
            self._scorer = None

    def _merge(self):
        """Fold pending adds into the main arrays (internal ids only grow, so order is kept)."""
        if not self._pending:
            return
        base = len(self.doc_iids)
        offsets = np.cumsum([0] + [len(p[0]) for p in self._pending])
        self.doc_iids = np.concatenate([self.doc_iids] + [p[0] for p in self._pending])
        self.doc_len = np.concatenate([self.doc_len] + [p[1] for p in self._pending])
        self.alive = np.concatenate([self.alive, np.ones(offsets[-1], bool)])
        self.terms = np.concatenate([self.terms] + [p[2] for p in self._pending])
        self.docs = np.concatenate([self.docs] + [p[3] + (base + off) for p, off in zip(self._pending, offsets)])
        self.tfs = np.concatenate([self.tfs] + [p[4] for p in self._pending])
        self._pending = []

    def compact(self) -> None:
        """Drop deleted documents' postings and renumber positions (terms no document uses stay in
        the vocabulary with empty columns until the next full rebuild)."""
        self._merge()
        if self.alive.all():
            return
        new_pos = np.cumsum(self.alive) - 1
        keep = self.alive[self.docs]
        self.terms, self.tfs = self.terms[keep], self.tfs[keep]
        self.docs = new_pos[self.docs[keep]].astype(np.int32)
        self.doc_iids, self.doc_len = self.doc_iids[self.alive], self.doc_len[self.alive]
        self.alive = np.ones(len(self.doc_iids), bool)
        self._scorer = None

    # ---- searching ---------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        return int(self.alive.sum()) + sum(len(p[0]) for p in self._pending)

    def scorer(self):
        """The bm25s.BM25 over the live documents, laid out again after a change."""
        if self._scorer is None:
            self.compact()
            self._scorer = _bm25s_scorer(self.config, self.vocab, self.terms, self.docs, self.tfs, self.doc_len)
        return self._scorer

    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, internal ids), best first: at most k items that share a term with the query and,
        when `allowed` (sorted internal ids) is given, are among them."""
        return self.search_many([text], k, allowed)[0]

    def search_many(self, texts, k: int, allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search` for each text; the filter's document mask is computed once for them all."""
        scorer = self.scorer()
        mask = None
        if allowed is not None:  # bm25s's own filter: a 0/1 weight per document
            mask = np.isin(self.doc_iids, allowed, assume_unique=True).astype(np.float32)
        empty = (np.empty(0, np.float32), np.empty(0, np.int64))
        out = []
        for text in texts:
            ids = scorer.get_tokens_ids(self.analyze(text))
            if not ids or scorer.scores["num_docs"] == 0:
                out.append(empty)
                continue
            scores = scorer.get_scores_from_ids(ids, weight_mask=mask)
            hits = np.flatnonzero(scores > 0)
            if len(hits) > k:
                hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
            # best first; ties by arrival order, so results are reproducible
            hits = hits[np.lexsort((hits, -scores[hits]))]
            out.append((scores[hits], self.doc_iids[hits]))
        return out

    # ---- files -------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        self.compact()
        vocab = sorted(self.vocab, key=self.vocab.get)
        buf = io.BytesIO()
        np.savez(buf, format=np.array(BM25_FORMAT), config=np.array(json.dumps(self.config.to_dict())),
                 vocab=np.array(json.dumps(vocab, ensure_ascii=False)), doc_iids=self.doc_iids,
                 doc_len=self.doc_len, terms=self.terms, docs=self.docs, tfs=self.tfs)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path, config: BM25Config) -> "BM25Index":
        """Read a snapshot; raises OSError/ValueError when it is unreadable or made differently."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != BM25_FORMAT:
                raise ValueError(f"{path.name} has BM25 format {int(z['format'])}, expected {BM25_FORMAT}")
            if json.loads(str(z["config"])) != config.to_dict():
                raise ValueError(f"{path.name} was built with other BM25 settings")
            self = cls(config)
            self.vocab = {w: i for i, w in enumerate(json.loads(str(z["vocab"])))}
            self.doc_iids, self.doc_len = z["doc_iids"], z["doc_len"]
            self.terms, self.docs, self.tfs = z["terms"], z["docs"], z["tfs"]
        n = len(self.doc_iids)
        if len(self.doc_len) != n or not (len(self.terms) == len(self.docs) == len(self.tfs)) \
                or (len(self.docs) and (self.docs.max() >= n or self.terms.max() >= len(self.vocab))):
            raise ValueError(f"{path.name} is inconsistent")
        self.alive = np.ones(n, bool)
        return self


def _bm25s_scorer(config: BM25Config, vocab: dict, terms, docs, tfs, doc_len):
    """A bm25s.BM25 whose score matrix is what `bm25s.BM25(k1, b).index(...)` would build over these
    documents (method and idf "lucene"), computed from term frequencies in one vectorized pass."""
    import bm25s
    import scipy.sparse

    n_docs, n_terms = len(doc_len), len(vocab)
    scorer = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
    df = np.bincount(terms, minlength=n_terms)
    with np.errstate(divide="ignore"):
        idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    avg = float(doc_len.mean()) if n_docs else 1.0
    # the length norm in float64 and the rest in float32, as bm25s computes it
    norm = (config.k1 * ((1 - config.b) + config.b * doc_len / avg)).astype(np.float32)
    data = idf[terms] * (tfs / (norm[docs] + tfs))
    # term-major (CSC) layout by scipy's counting sort; documents stay ascending within a term
    matrix = scipy.sparse.csc_matrix((data, (docs, terms)), shape=(n_docs, n_terms))
    scorer.scores = {"data": matrix.data, "indices": matrix.indices.astype(np.int32, copy=False),
                     "indptr": matrix.indptr, "num_docs": n_docs}
    scorer.vocab_dict = vocab
    scorer.nonoccurrence_array = None
    return scorer


def write_snapshot(index: BM25Index, path: Path) -> str:
    """Write the index to `path` durably (temp file, fsync, rename); returns its sha256."""
    import hashlib

    from bertserve.search.engine import fsync_dir

    data = index.to_bytes()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()
