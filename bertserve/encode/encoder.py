"""Encoder: text -> Tokenizer -> length-sorted batches -> Backend -> Pooling -> (normalize) -> vectors."""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bertserve.encode.backends import QualityGate, make_backend
from bertserve.encode.config import EncoderConfig
from bertserve.encode.pooling import canonical_pooling, pool, width_factor
from bertserve.engine.collate import pad_batch
from bertserve.engine.contract import Engine, Prepared
from bertserve.errors import BadInput, BadInputType
from bertserve.models import Checkpoint, load_checkpoint
from bertserve.models.tokenizer import TextTokenizer, Tokenized


def _check_layers(layers, num_layers: int) -> tuple[int, ...]:
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = (int(layers),)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise BadInput(f"layers must be an int or a non-empty list of ints, got {layers!r}")
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise BadInput(f"layers must be ints, got {layer!r}")
        if not -num_layers <= layer <= num_layers:
            raise BadInput(f"layer {layer} is out of range: the model has {num_layers} layers "
                             f"(valid: -{num_layers}..{num_layers}, 0 is the embedding output)")
        out.append(int(layer))
    return tuple(out)


@dataclass
class Encoded:
    """One encode request's answer, as the batcher hands it to a front-end."""
    vectors: np.ndarray            # (n, dim), or (n, L, dim) for pooling NONE
    tokens: list[list[str]]        # the tokens each text became (only when asked for; else empty)
    num_tokens: int                # total tokens, for OpenAI's `usage`


class Encoder(Engine):
    """Encode texts into vectors with a BERT-family checkpoint; see EncoderConfig for the options."""

    kind = "encode"

    def __init__(self, model=None, *, config: EncoderConfig | None = None, checkpoint: Checkpoint | None = None,
                 **options):
        if config is not None and options:
            raise BadInputType("pass either config= or keyword options, not both")
        if config is None:
            config = EncoderConfig(model=None if model is None else str(model), **options)
        elif model is not None:
            config = dataclasses.replace(config, model=str(model))
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.checkpoint = checkpoint if checkpoint is not None else load_checkpoint(config.model)
        self.config = self._resolve(config)
        ckpt, cfg = self.checkpoint, self.config
        self.tokenizer = TextTokenizer(ckpt.tokenizer, cfg.max_seq_len, cfg.long_text, cfg.chunk_overlap)
        n = ckpt.num_layers
        self._hidden_indices = tuple(layer if layer >= 0 else n + 1 + layer for layer in cfg.layers)
        self.hidden_indices = tuple(sorted(set(self._hidden_indices)))  # what the backend computes
        self.need_pooler = cfg.pooling == "CLS_POOLED"
        # Segment ids only where the model has segments: RoBERTa-style models (one type) and DistilBERT (no
        # token_type_ids argument) would fail or silently misread them.
        self.use_type_ids = ("token_type_ids" in getattr(ckpt.tokenizer, "model_input_names", ())
                             and getattr(ckpt.config, "type_vocab_size", 0) > 1
                             and "token_type_ids" in inspect.signature(ckpt.model.forward).parameters)
        t = self.tokenizer.template
        self._special_ids = torch.tensor(sorted(set(t.single[0] + t.single[1] + t.pair[0] + t.pair[1] + t.pair[2])))
        self.dim = ckpt.hidden_size * len(cfg.layers) * width_factor(cfg.pooling)
        if ckpt.dense:
            self.dim = ckpt.dense[-1][0].out_features
        self.backend = None
        self._auto = None  # for `auto`: the decision (read from the cache, or being measured in the background)
        if cfg.backend == "auto":
            from bertserve.encode.backends.selection import AutoChoice
            self._auto = AutoChoice(self, cfg.auto_gate, cfg.auto_sample, self._switch_backend)
            self.backend = self._auto.backend
        else:
            self.backend = make_backend(cfg.backend, ckpt, self.hidden_indices, self.need_pooler, self.use_type_ids,
                                        cfg.num_threads)

    # -- configuration --------------------------------------------------------------------------------
    def _resolve(self, cfg: EncoderConfig) -> EncoderConfig:
        """Fill the checkpoint's defaults in and check every option, so errors come at construction."""
        ckpt = self.checkpoint
        pooling = canonical_pooling(cfg.pooling if cfg.pooling is not None else ckpt.default_pooling)
        layers = _check_layers((-1,) if cfg.layers is None else cfg.layers, ckpt.num_layers)
        if pooling == "CLS_POOLED":
            if not ckpt.has_pooler:
                raise BadInput(f"CLS_POOLED needs a pooler layer and {ckpt.path} has none; "
                                 "use CLS_TOKEN or REDUCE_MEAN")
            if layers != (-1,) and layers != (ckpt.num_layers,):
                raise BadInput("CLS_POOLED uses the pooler on the last layer; it cannot be combined with other layers")
        max_len = cfg.max_seq_len
        if max_len == "auto":
            max_len = ckpt.default_max_seq_len or ckpt.model_max_len
        elif max_len is None:
            max_len = ckpt.model_max_len
        elif isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
            raise BadInput(f"max_seq_len must be an int, None or 'auto', got {max_len!r}")
        elif not 3 <= max_len <= ckpt.model_max_len:
            raise BadInput(f"max_seq_len must be between 3 and the model's maximum {ckpt.model_max_len}, got {max_len}")
        if cfg.long_text == "chunk" and pooling == "NONE":
            raise BadInput("NONE pooling returns token vectors and cannot be combined with long_text='chunk'")
        gate = cfg.auto_gate if cfg.auto_gate is not None else QualityGate()
        if isinstance(gate, dict):
            gate = QualityGate(**gate)
        if not isinstance(gate, QualityGate):
            raise BadInput(f"auto_gate must be a QualityGate or a dict of its thresholds, got {gate!r}")
        normalize = ckpt.default_normalize if cfg.normalize is None else bool(cfg.normalize)
        if ckpt.dense and (pooling != canonical_pooling(ckpt.default_pooling) or layers not in ((-1,), (ckpt.num_layers,))):
            raise BadInput(f"{ckpt.path} projects its own pooled last-layer vector with a Dense module; "
                             "pooling and layers cannot be changed for it")
        if normalize and pooling == "NONE":
            normalize = False  # token vectors are returned as the model made them
        self._fixed_length = cfg.max_seq_len not in (None,)  # NONE output length: max_seq_len, or the longest text
        return dataclasses.replace(cfg, model=str(ckpt.path), pooling=pooling, layers=layers, max_seq_len=int(max_len),
                                   normalize=normalize, auto_gate=gate)

    def _switch_backend(self, backend, record):
        self.backend = backend  # read once per embed() call, so a call in flight finishes on the old one

    @property
    def backend_choice(self) -> dict | None:
        """For `auto`: the decision record (what was measured, what won). Waits for a measurement in progress."""
        return self.wait_for_backend()

    def wait_for_backend(self, timeout: float | None = None) -> dict | None:
        """For `auto` on a fresh cache: wait until the background measurement has chosen (and switched to) the
        backend; returns the decision record (None for another backend, or on timeout)."""
        return None if self._auto is None else self._auto.wait(timeout)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def fingerprint(self) -> dict:
        """What decides this encoder's vectors: the model's content (sha256 of its weight and config files, not
        its path), pooling, layers, normalization, max_seq_len and width. A search collection records it, so a
        query encoder that would put vectors in another space is refused instead of returning wrong neighbours.
        The backend is left out: every backend `auto` may pick passes the quality gate against torch."""
        if getattr(self, "_fingerprint", None) is None:
            from bertserve.encode.backends.export_cache import checkpoint_content_hash

            cfg = self.config
            self._fingerprint = {"model": Path(cfg.model).name, "model_sha256": checkpoint_content_hash(self.checkpoint),
                                 "pooling": cfg.pooling, "layers": list(cfg.layers), "normalize": bool(cfg.normalize),
                                 "mask_cls_sep": bool(cfg.mask_cls_sep), "max_seq_len": int(cfg.max_seq_len),
                                 "dim": int(self.dim)}
        return dict(self._fingerprint)

    def info(self) -> dict:
        info = {**self.checkpoint.info(), "encoder": self.config.to_dict(), "dim": self.dim, "backend": self.backend.name}
        if self._auto is not None:
            record = self._auto.record  # never waits: /status must answer while `auto` is still measuring
            info["auto_choice"] = ({k: v for k, v in record.items() if k != "entry"} if record is not None
                                   else {"status": "measuring in the background; serving on torch meanwhile"})
        return info

    # -- the engine contract (what the batcher calls) ------------------------------------------------
    @property
    def name(self) -> str:
        return Path(str(self.checkpoint.path)).name

    def prepare(self, inputs, *, is_tokenized: bool = False, show_tokens: bool = False) -> Prepared:
        items = self.tokenize(inputs, is_tokenized=is_tokenized)
        tokens = [self.tokenizer.tokens(it) for it in items] if show_tokens else []
        return Prepared(items, tokens)

    def run(self, items: list[Tokenized]) -> np.ndarray:
        return self.embed(items)

    def finish(self, prepared: Prepared, rows: list) -> Encoded:
        if rows and rows[0].ndim == 2:
            # pooling NONE: items encoded in different batches may be padded to different lengths
            width = max(r.shape[0] for r in rows)
            out = np.zeros((len(rows), width, rows[0].shape[1]), dtype=rows[0].dtype)
            for k, r in enumerate(rows):
                out[k, :r.shape[0]] = r
        elif rows:
            out = np.stack(rows)
        else:
            out = self.embed([])
        return Encoded(out, prepared.context, prepared.num_tokens)

    def describe(self) -> dict:
        cfg = self.config
        return {"kind": self.kind, "name": self.name, "dim": self.dim, "max_seq_len": cfg.max_seq_len,
                "pooling": cfg.pooling, "layers": list(cfg.layers), "normalize": cfg.normalize,
                "backend": getattr(self.backend, "name", None)}

    # -- the pipeline ---------------------------------------------------------------------------------
    def tokenize(self, texts, is_tokenized: bool = False) -> list[Tokenized]:
        return self.tokenizer(texts, is_tokenized=is_tokenized)

    def encode(self, texts, *, is_tokenized: bool = False, show_tokens: bool = False, batch_size: int | None = None,
               progress: bool = False):
        items = self.tokenize(texts, is_tokenized=is_tokenized)
        vectors = self.embed(items, batch_size=batch_size, progress=progress)
        if show_tokens:
            return vectors, [self.tokenizer.tokens(item) for item in items]
        return vectors

    def embed(self, items: list[Tokenized], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Vectors of already tokenized items, in their order."""
        cfg = self.config
        windows = [(i, w) for i, item in enumerate(items) for w in range(len(item.windows))]
        windows.sort(key=lambda iw: len(items[iw[0]].windows[iw[1]]))  # similar lengths share a batch: less padding
        size = batch_size or cfg.batch_size
        none_pooling = cfg.pooling == "NONE"
        out_len = 0
        if none_pooling:
            longest = max((len(item.windows[0]) for item in items), default=0)
            out_len = cfg.max_seq_len if self._fixed_length else longest
        per_window: dict[tuple[int, int], torch.Tensor] = {}
        backend = self.backend  # once per call: `auto` may switch backends meanwhile, never within one call
        starts = range(0, len(windows), size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, total=math.ceil(len(windows) / size), unit="batch", desc="encode")
        for start in starts:
            batch = windows[start:start + size]
            vecs = self._embed_batch([items[i].windows[w] for i, w in batch],
                                     [items[i].type_ids[w] for i, w in batch], out_len, backend)
            for key, v in zip(batch, vecs):
                per_window[key] = v
        if not items:
            shape = (0, out_len, self.dim) if none_pooling else (0, self.dim)
            return np.zeros(shape, dtype=cfg.dtype)
        rows = []
        for i, item in enumerate(items):
            if len(item.windows) == 1:
                rows.append(per_window[(i, 0)])
            else:  # a chunked long text: windows count by how many of its tokens they hold
                weights = torch.tensor(item.weights, dtype=torch.float32)
                stacked = torch.stack([per_window[(i, w)] for w in range(len(item.windows))])
                rows.append((stacked * weights[:, None]).sum(0) / weights.sum())
        result = torch.stack(rows)
        with torch.no_grad():
            for dense in self.checkpoint.dense:
                result = dense(result)
        if cfg.normalize:
            result = torch.nn.functional.normalize(result, p=2, dim=-1)
        return result.numpy().astype(cfg.dtype, copy=False)

    def _embed_batch(self, ids: list[list[int]], type_ids: list[list[int]], out_len: int,
                     backend=None) -> torch.Tensor:
        batch = pad_batch(ids, self.tokenizer.pad_id, type_ids if self.use_type_ids else None)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        length = input_ids.shape[1]
        hidden, pooled = (backend or self.backend).forward(input_ids, mask, batch.get("token_type_ids"))
        h = torch.cat([hidden[i] for i in self._hidden_indices], dim=-1).float()
        content = None
        if self.config.mask_cls_sep:
            content = mask.bool() & ~torch.isin(input_ids, self._special_ids)
        vectors = pool(self.config.pooling, h, mask, content, None if pooled is None else pooled.float())
        if self.config.pooling == "NONE" and out_len > length:
            vectors = torch.nn.functional.pad(vectors, (0, 0, 0, out_len - length))
        return vectors
