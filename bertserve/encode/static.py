"""Static token-table models: text -> token ids -> rows of a table -> mean (-> normalize). No transformer runs.

`Encoder(model=DIR)` hands a static folder (see `bertserve.models.static_table`) to `StaticEncoder`. Vectors
equal model2vec's `StaticModel.encode` on the same folder: the same truncation (max_length tokens, after
cutting the text at max_length x the median token length in characters, as model2vec does), no special
tokens, the unknown token removed, an empty text giving a zero vector.
"""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np

from bertserve.encode.config import EncoderConfig
from bertserve.encode.encoder import Encoder, Variant, config_of
from bertserve.encode.pooling import canonical_pooling
from bertserve.errors import BadInput
from bertserve.models.static_table import StaticCheckpoint, StaticTable
from bertserve.models.tokenizer import TextTokenizer, Tokenized

BACKEND_NAME = "static"


class StaticBackend:
    name = BACKEND_NAME


class StaticTokenizer:
    """Texts -> content ids (no special tokens, no unknown token), as model2vec tokenizes: `ids` gives them flat
    for the whole batch (the fast path of `StaticEncoder.encode`), calling it gives `Tokenized` items (the
    engine contract's form)."""

    def __init__(self, table: StaticTable, max_len: int | None):
        self.backend = table.tokenizer
        self.max_len = max_len
        vocab = table.tokenizer.get_vocab()
        self.unk_id = next((vocab[t] for t in ("[UNK]", "<unk>", "[unk]", "<UNK>") if t in vocab), None)
        model = json.loads(table.tokenizer.to_str()).get("model", {})
        if model.get("unk_token") in vocab:
            self.unk_id = vocab[model["unk_token"]]
        self.pad_id = 0
        tokens = sorted(vocab, key=vocab.get)
        self._char_limit = None
        if max_len is not None:  # model2vec cuts the text first, at max_len x the median token length, then
            self._char_limit = max_len * int(np.median([len(t) for t in tokens]))  # its tokenizer truncates
            self.backend.enable_truncation(max_len)

    def ids(self, texts, is_tokenized: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(flat int64 ids of all texts, tokens per text): truncated at max_len, then the unknown token dropped."""
        TextTokenizer._check_texts(texts, is_tokenized)
        if is_tokenized:
            rows = [[i for i in map(self.backend.token_to_id, toks) if i is not None][: self.max_len] for toks in texts]
        else:
            if self._char_limit is not None:
                texts = [t[: self._char_limit] for t in texts]
            rows = [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        if self.unk_id is not None:
            unknown = flat == self.unk_id
            if unknown.any():
                owner = np.repeat(np.arange(len(rows)), lengths)
                lengths = lengths - np.bincount(owner[unknown], minlength=len(rows))
                flat = flat[~unknown]
        return flat, lengths

    def __call__(self, texts, is_tokenized: bool = False) -> list[Tokenized]:
        flat, lengths = self.ids(texts, is_tokenized)
        return [Tokenized([row], [row], [len(row)])  # a table has no segments: type ids are never read
                for row in (r.tolist() for r in np.split(flat, np.cumsum(lengths)[:-1]))] if len(lengths) else []

    def tokens(self, item: Tokenized) -> list[str]:
        return [self.backend.id_to_token(i) for w in item.windows for i in w]


class StaticEncoder(Encoder):
    """An Encoder over a static token table: the same surface (encode, tokenize, embed, dim, config, info, and
    the engine contract prepare/run/finish the batcher calls), with `embed` a gather and a mean.

    `Encoder(model=DIR)` returns one of these when DIR is a static folder. Options that only mean something
    for a transformer (layers, pooling other than the mean, chunking) are refused; `backend` is always "static".
    """
    request_options = ()

    def __init__(self, model=None, *, config: EncoderConfig | None = None, checkpoint=None, **options):
        config = config_of(model, config, options)
        if config.model is None:
            raise BadInput("a static encoder needs model=FOLDER")
        self.table = StaticTable.load(config.model)
        self.checkpoint = StaticCheckpoint(self.table)
        self.backend = StaticBackend()
        self._auto = None  # a table has no backends to measure
        self.config = self._resolve(config)
        self.tokenizer = StaticTokenizer(self.table, self.config.max_seq_len)
        self.dim = int(self.table.vectors.shape[1])
        # what the Encoder's request path reads: one variant (the table's own settings), no per-call options
        self.base = Variant(self.config, self.tokenizer, (0,), self.dim, self.config.max_seq_len is not None)
        self._variants = {}
        self.unknown_texts = 0
        self._ranges = None

    def variant(self, **options) -> Variant:
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise BadInput(f"{self.table.path} is a static model: per-request {', '.join(given)} do not apply")
        return self.base

    def _resolve(self, cfg: EncoderConfig) -> EncoderConfig:
        t = self.table
        if cfg.pooling is not None and canonical_pooling(cfg.pooling) != "REDUCE_MEAN":
            raise BadInput(f"{t.path} is a static model: its pooling is the mean of token vectors, not {cfg.pooling}")
        if cfg.layers not in (None, (0,), [0]):
            raise BadInput(f"{t.path} is a static model: it has no layers to choose")
        if cfg.long_text != "truncate" or cfg.mask_cls_sep:
            raise BadInput("a static model averages all its tokens: long_text='chunk' and mask_cls_sep do not apply")
        max_len = t.max_length if cfg.max_seq_len == "auto" else cfg.max_seq_len  # EncoderConfig checked the rest
        normalize = t.normalize if cfg.normalize is None else bool(cfg.normalize)
        return dataclasses.replace(cfg, model=str(t.path), pooling="REDUCE_MEAN", layers=(0,), normalize=normalize,
                                   max_seq_len=None if max_len is None else int(max_len), auto_gate=None)

    def info(self) -> dict:
        return {**self.checkpoint.info(), "encoder": self.config.to_dict(), "dim": self.dim, "backend": BACKEND_NAME}

    def encode(self, texts, *, is_tokenized: bool = False, show_tokens: bool = False, batch_size: int | None = None,
               progress: bool = False, prompt: str | None = None, precision: str = "float32", **options):
        """As `Encoder.encode`; without token lists to show, ids go straight from the tokenizer to the mean."""
        if show_tokens or prompt is not None or options:
            return super().encode(texts, is_tokenized=is_tokenized, show_tokens=show_tokens, prompt=prompt,
                                  precision=precision, **options)
        vectors = self.mean(*self.tokenizer.ids(texts, is_tokenized))
        return vectors if precision == "float32" else self.quantize(vectors, precision)

    def embed(self, items: list[Tokenized], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        rows = [item.windows[0] for item in items]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        return self.mean(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())),
                         lengths)

    def mean(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Mean of each text's rows as one sparse (texts x vocabulary) product with the table: no gathered
        (tokens x dim) copy, which costs more than the sums (a text without tokens gets a zero vector)."""
        from scipy.sparse import csr_matrix

        table = self.table.vectors
        scale = np.repeat((1.0 / np.maximum(lengths, 1)).astype(table.dtype), lengths)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        out = np.asarray(csr_matrix((scale, flat, indptr), shape=(len(lengths), len(table))) @ table)
        if self.config.normalize:
            out /= np.sqrt(np.einsum("ij,ij->i", out, out))[:, None] + 1e-32
        return out.astype(self.config.dtype, copy=False)
