"""Static token-table models: text -> token ids -> rows of a table -> mean (-> normalize). No transformer runs.

`Encoder(model=DIR)` hands a static folder (see `bertserve.models.static_table`) to `StaticEncoder`. Vectors
equal model2vec's `StaticModel.encode` on the same folder: the same truncation (max_length tokens, after
cutting the text at max_length x the median token length in characters, as model2vec does), no special
tokens, the unknown token removed, an empty text giving a zero vector.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from bertserve.encode.config import EncoderConfig
from bertserve.encode.pooling import canonical_pooling
from bertserve.encode.encoder import Encoder, Variant, config_of
from bertserve.errors import BadInput
from bertserve.models.static_table import StaticCheckpoint, StaticTable
from bertserve.models.tokenizer import TextTokenizer, Tokenized

BACKEND_NAME = "static"


class StaticBackend:
    name = BACKEND_NAME


class StaticTokenizer:
    """Texts -> `Tokenized` items of content ids (no special tokens, no unknown token), as model2vec tokenizes."""

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
        if max_len is not None:  # model2vec cuts the text first, at max_len x the median token length
            self._char_limit = max_len * int(np.median([len(t) for t in tokens]))

    def __call__(self, texts, is_tokenized: bool = False) -> list[Tokenized]:
        TextTokenizer._check_texts(texts, is_tokenized)
        if is_tokenized:
            ids = [[self.backend.token_to_id(t) for t in toks] for toks in texts]
            ids = [[i for i in row if i is not None] for row in ids]
        else:
            if self._char_limit is not None:
                texts = [t[: self._char_limit] for t in texts]
            ids = [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        out = []
        for row in ids:
            if self.unk_id is not None:
                row = [i for i in row if i != self.unk_id]
            if self.max_len is not None:
                row = row[: self.max_len]
            out.append(Tokenized([row], [[0] * len(row)], [len(row)]))
        return out

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

    def embed(self, items: list[Tokenized], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Mean of each item's token rows: one gather over all tokens, then sums between offsets."""
        rows = [item.windows[0] for item in items]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        if lengths.sum():
            flat = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum()))
            gathered = self.table.vectors[flat]
            filled = lengths > 0
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[filled]
            out[filled] = np.add.reduceat(gathered, starts, axis=0) / lengths[filled, None]
        if self.config.normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-32
        return out.astype(self.config.dtype, copy=False)
