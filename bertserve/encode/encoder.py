"""Encoder: text -> Tokenizer -> length-sorted batches -> Backend -> Pooling -> (normalize) -> vectors."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from bertserve.encode.backends import QualityGate, make_backend
from bertserve.encode.config import EncoderConfig
from bertserve.encode.pooling import canonical_pooling, pool, width_factor
from bertserve.encode.precision import calibration_ranges, check_precision, quantize
from bertserve.engine.collate import length_batches, pad_batch
from bertserve.engine.contract import Engine, Prepared
from bertserve.errors import BadInput, BadInputType
from bertserve.models import Checkpoint, load_checkpoint
from bertserve.models.coverage import report_uncovered, unknown_share
from bertserve.models.tokenizer import TextTokenizer, Tokenized


REQUEST_OPTIONS = ("pooling", "layers", "normalize", "max_seq_len", "long_text", "mask_cls_sep")
MAX_VARIANTS = 64
# The fixed cost of one forward call, in tokens of work: length_batches cuts a sorted list where the padding saved
# is worth another call. Quiet AMD EPYC VM, 2 threads, Lee sentences (benchmarks/batching.py): requests of 32
# texts one after another ran 1.29x (openvino-int8) and 1.42x (onnx) faster than cutting every 32 rows with 32;
# 16 or 64 gained less; one call over the whole corpus stayed within noise.
BATCH_COST_TOKENS = 32
# Padded tokens of one forward call at most (rows x length): 32 rows of short texts, 8 of 512 tokens. Activation
# memory grows with rows x length^2: OpenVINO held 2.8 GB after batches of 32 x 512 tokens, 0.9 GB after 8 x 512.
MAX_BATCH_TOKENS = 4096


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


def config_of(model, config: EncoderConfig | None, options: dict) -> EncoderConfig:
    """The EncoderConfig an Encoder (or StaticEncoder) constructor was given: config=, or model + keyword options."""
    if config is not None and options:
        raise BadInputType("pass either config= or keyword options, not both")
    if config is None:
        return EncoderConfig(model=None if model is None else str(model), **options)
    return config if model is None else dataclasses.replace(config, model=str(model))


@dataclass
class Encoded:
    """One encode request's answer, as the batcher hands it to a front-end."""
    vectors: np.ndarray            # (n, dim), or (n, L, dim) for pooling NONE
    tokens: list[list[str]]        # the tokens each text became (only when asked for; else empty)
    num_tokens: int                # total tokens, for OpenAI's `usage`


class Encoder(Engine):
    """Encode texts into vectors with a BERT-family checkpoint; see EncoderConfig for the options."""

    kind = "encode"
    request_options = REQUEST_OPTIONS  # what one request may change (/status tells clients)

    def __new__(cls, model=None, *, config: EncoderConfig | None = None, checkpoint: Checkpoint | None = None,
                **options):
        # A static token-table folder gets the StaticEncoder subclass (numpy gather + mean, no torch forward).
        from bertserve.models.static_table import is_static_folder
        if cls is Encoder and checkpoint is None and is_static_folder(model if model is not None
                                                                      else getattr(config, "model", None)):
            from bertserve.encode.static import StaticEncoder
            cls = StaticEncoder
        return super().__new__(cls)

    def __init__(self, model=None, *, config: EncoderConfig | None = None, checkpoint: Checkpoint | None = None,
                 **options):
        config = config_of(model, config, options)
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.checkpoint = checkpoint if checkpoint is not None else load_checkpoint(config.model)
        self.config = self._resolve(config)
        ckpt, cfg = self.checkpoint, self.config
        # Segment ids only where the model has segments: RoBERTa-style models (one type) and DistilBERT (no
        # token_type_ids argument) would fail or silently misread them.
        self.use_type_ids = ("token_type_ids" in getattr(ckpt.tokenizer, "model_input_names", ())
                             and getattr(ckpt.config, "type_vocab_size", 0) > 1
                             and "token_type_ids" in inspect.signature(ckpt.model.forward).parameters)
        self._variants: dict[tuple, Variant] = {}
        self.base = self._variant_of(cfg, fixed_length=config.max_seq_len is not None)
        self.tokenizer = self.base.tokenizer
        self.hidden_indices = tuple(sorted(set(self.base.hidden_indices)))  # what the backend computes
        self.need_pooler = cfg.pooling == "CLS_POOLED"
        t = self.tokenizer.template
        self._special_ids = torch.tensor(sorted(set(t.single[0] + t.single[1] + t.pair[0] + t.pair[1] + t.pair[2])))
        self.dim = self.base.dim
        self._extra_backends: dict[tuple, object] = {}  # for request options needing layers the backend skips
        self.unknown_texts = 0  # texts seen so far that were mostly [UNK] for this model (/status counts them)
        self._ranges = None     # int8/uint8 calibration ranges, computed on first use
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
        if cfg.prompt is not None and cfg.prompt not in ckpt.prompts:
            raise BadInput(f"prompt {cfg.prompt!r} is not one of the model's prompts "
                           f"({', '.join(ckpt.prompts) or 'it has none'})")
        normalize = ckpt.default_normalize if cfg.normalize is None else bool(cfg.normalize)
        if ckpt.dense and (pooling != canonical_pooling(ckpt.default_pooling) or layers not in ((-1,), (ckpt.num_layers,))):
            raise BadInput(f"{ckpt.path} projects its own pooled last-layer vector with a Dense module; "
                             "pooling and layers cannot be changed for it")
        if normalize and pooling == "NONE":
            normalize = False  # token vectors are returned as the model made them
        return dataclasses.replace(cfg, model=str(ckpt.path), pooling=pooling, layers=layers, max_seq_len=int(max_len),
                                   normalize=normalize, auto_gate=gate)

    def _variant_of(self, cfg: EncoderConfig, fixed_length: bool) -> "Variant":
        ckpt, n = self.checkpoint, self.checkpoint.num_layers
        tokenizer = TextTokenizer(ckpt.tokenizer, cfg.max_seq_len, cfg.long_text, cfg.chunk_overlap)
        dim = ckpt.dense[-1][0].out_features if ckpt.dense else \
            ckpt.hidden_size * len(cfg.layers) * width_factor(cfg.pooling)
        return Variant(cfg, tokenizer, tuple(i if i >= 0 else n + 1 + i for i in cfg.layers), dim, fixed_length)

    def variant(self, **options) -> "Variant":
        """These settings with one request's overrides of REQUEST_OPTIONS (pooling, layers, normalize,
        max_seq_len, long_text, mask_cls_sep): items tokenized by it share batches and forward passes with any
        other variant's; each is pooled its own way. A bad option raises BadInput naming it."""
        options = {k: v for k, v in options.items() if v is not None}
        if not options:
            return self.base
        unknown = set(options) - set(REQUEST_OPTIONS)
        if unknown:
            raise BadInput(f"unknown encoding option(s) {', '.join(sorted(unknown))}; valid: {', '.join(REQUEST_OPTIONS)}")
        if isinstance(options.get("layers"), list):
            options["layers"] = tuple(options["layers"])
        key = tuple(sorted(options.items()))
        if key not in self._variants:
            if len(self._variants) >= MAX_VARIANTS:  # each keeps a tokenizer; requests may not grow memory forever
                self._variants.pop(next(iter(self._variants)))
            try:
                cfg = self._resolve(dataclasses.replace(self.config, **options))
            except (ValueError, TypeError) as e:
                raise BadInput(str(e)) from None
            self._variants[key] = self._variant_of(cfg, self.base.fixed_length or "max_seq_len" in options)
        return self._variants[key]
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

    @property
    def name(self) -> str:
        """The registered name it was loaded by, else its folder's name."""
        return self.checkpoint.name or self.checkpoint.path.name

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.checkpoint.prompts)
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
    def prepare(self, inputs, *, is_tokenized: bool = False, show_tokens: bool = False, prompt: str | None = None,
                **options) -> Prepared:
        """`options`: this request's own pooling, layers, normalize, max_seq_len, long_text, mask_cls_sep; its
        items then share batches and forward passes with other requests' and are pooled their own way."""
        variant = self.variant(**options)
        items = self.tokenize(inputs, is_tokenized=is_tokenized, prompt=prompt, variant=variant)
        tokens = [variant.tokenizer.tokens(it) for it in items] if show_tokens else []
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
                "prompts": self.prompts, "default_prompt": cfg.prompt, "unknown_token_texts": self.unknown_texts,
                "backend": getattr(self.backend, "name", None)}

    # -- the pipeline ---------------------------------------------------------------------------------
    def with_prompt(self, texts, prompt: str | None, is_tokenized: bool = False):
        """`texts` with the model's prompt called `prompt` in front (e5: "query" -> "query: ..."); None: the
        encoder's default prompt (config.prompt), "": none."""
        if prompt is None:
            prompt = self.config.prompt
        if not prompt:
            return texts
        if prompt not in self.checkpoint.prompts:
            known = ", ".join(self.checkpoint.prompts) or "none: it is used without prompts"
            raise BadInput(f"model {self.name} has no prompt {prompt!r} (its prompts: {known})")
        if is_tokenized:
            raise BadInput("prompt cannot be combined with is_tokenized: put the prompt's tokens in the token lists")
        prefix = self.checkpoint.prompts[prompt]
        self.tokenizer._check_texts(texts, False)
        return [prefix + t for t in texts]

    def tokenize(self, texts, is_tokenized: bool = False, prompt: str | None = None,
                 variant: "Variant | None" = None) -> list[Tokenized]:
        """Texts -> model inputs; warns (UnknownTokensWarning) when some are mostly [UNK] for this model."""
        texts = self.with_prompt(texts, prompt, is_tokenized)
        variant = variant or self.base
        items = variant.tokenizer(texts, is_tokenized=is_tokenized)
        if variant is not self.base:
            for it in items:
                it.variant = variant
        unk = self.tokenizer.unk_id
        if unk is not None and items:
            shares = [unknown_share(it.windows[0], it.weights[0], unk) for it in items]
            self.unknown_texts += report_uncovered(texts, shares, self.name)
        return items

    def explain_tokens(self, texts, prompt: str | None = None, **options) -> list[dict]:
        """Per text: the tokens and ids the model sees, their character spans in the text, and whether it was
        cut at max_seq_len (what POST /tokenize answers). Spans refer to the text as given, prompt excluded."""
        variant = self.variant(**options)
        prompt = self.config.prompt if prompt is None else prompt
        prefix = self.checkpoint.prompts.get(prompt, "") if prompt else ""
        return variant.tokenizer.explain(self.with_prompt(texts, prompt), shift=len(prefix))

    def unknown_shares(self, texts) -> list[float]:
        """The share of each text's content tokens the model does not know ([UNK]), without warning."""
        items = self.tokenizer(texts)
        return [unknown_share(it.windows[0], it.weights[0], self.tokenizer.unk_id) for it in items]

    @property
    def calibrated_ranges(self) -> np.ndarray | None:
        """The int8/uint8 ranges if they were computed already (None: no quantized call yet)."""
        return self._ranges

    def quantization_ranges(self) -> np.ndarray:
        """(2, dim): per-dimension min and max of this encoder's vectors on the calibration sample (int8/uint8)."""
        if self._ranges is None:
            self._ranges = calibration_ranges(self)
        return self._ranges

    def quantize(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """Float vectors of this encoder -> int8 / uint8 / binary / ubinary (sentence-transformers' definitions)."""
        check_precision(precision)
        if precision != "float32" and self.config.pooling == "NONE":
            raise BadInput(f"precision {precision!r} applies to one vector per text, not to pooling NONE's token vectors")
        ranges = self.quantization_ranges() if precision in ("int8", "uint8") else None
        return quantize(vectors, precision, ranges)

    def encode(self, texts, *, is_tokenized: bool = False, show_tokens: bool = False, batch_size: int | None = None,
               progress: bool = False, prompt: str | None = None, precision: str = "float32", **options):
        """Vectors of `texts`. prompt: the name of one of the model's prompts (e5: "query" or "passage");
        precision: "float32", or "int8", "uint8", "binary", "ubinary" as sentence-transformers quantizes;
        options: this call's own pooling, layers, normalize, max_seq_len, long_text or mask_cls_sep."""
        check_precision(precision)
        variant = self.variant(**options)
        items = self.tokenize(texts, is_tokenized=is_tokenized, prompt=prompt, variant=variant)
        vectors = self.embed(items, batch_size=batch_size, progress=progress)
        if precision != "float32":
            if variant is not self.base:
                raise BadInput("precision other than float32 is calibrated for the encoder's own settings; "
                               "it cannot be combined with per-call pooling, layers or normalize")
            vectors = self.quantize(vectors, precision)
        if show_tokens:
            return vectors, [variant.tokenizer.tokens(item) for item in items]
        return vectors

    def embed(self, items: list[Tokenized], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Vectors of already tokenized items, in their order. Items may come from different variants (requests
        with their own options): they share batches and forward passes, and each is pooled its own way, so the
        rows then differ in width (returned as a list of arrays instead of one array)."""
        windows = [(i, w) for i, item in enumerate(items) for w in range(len(item.windows))]
        windows.sort(key=lambda iw: len(items[iw[0]].windows[iw[1]]))  # similar lengths share a batch: less padding
        size = batch_size or self.config.batch_size
        variants = {id(v): v for v in (it.variant or self.base for it in items)}
        out_len = {}  # pooling NONE: output length per variant (its max_seq_len, or its longest text)
        for key, v in variants.items():
            if v.config.pooling == "NONE":
                longest = max((len(it.windows[0]) for it in items if id(it.variant or self.base) == key), default=0)
                out_len[key] = v.config.max_seq_len if v.fixed_length else longest
        per_window: dict[tuple[int, int], torch.Tensor] = {}
        backend = self.backend  # once per call: `auto` may switch backends meanwhile, never within one call
        bounds = length_batches([len(items[i].windows[w]) for i, w in windows], size, BATCH_COST_TOKENS,
                                MAX_BATCH_TOKENS)
        if progress:
            from tqdm import tqdm
            bounds = tqdm(bounds, unit="batch", desc="encode")
        for start, end in bounds:
            batch = windows[start:end]
            vecs = self._embed_batch([items[i].windows[w] for i, w in batch], [items[i].type_ids[w] for i, w in batch],
                                     [items[i].variant or self.base for i, _ in batch], out_len, backend)
            for key, v in zip(batch, vecs):
                per_window[key] = v
        if not items:
            none_pooling = self.config.pooling == "NONE"
            shape = (0, out_len.get(id(self.base), 0), self.dim) if none_pooling else (0, self.dim)
            return np.zeros(shape, dtype=self.config.dtype)
        rows = []
        for i, item in enumerate(items):
            if len(item.windows) == 1:
                row = per_window[(i, 0)]
            else:  # a chunked long text: windows count by how many of its tokens they hold
                weights = torch.tensor(item.weights, dtype=torch.float32)
                stacked = torch.stack([per_window[(i, w)] for w in range(len(item.windows))])
                row = (stacked * weights[:, None]).sum(0) / weights.sum()
            rows.append(self._finish_row(row, item.variant or self.base))
        if len(variants) == 1:
            return np.stack(rows)
        return rows

    def _finish_row(self, row: torch.Tensor, variant: "Variant") -> np.ndarray:
        with torch.no_grad():
            for dense in self.checkpoint.dense:
                row = dense(row)
        if variant.config.normalize:
            row = torch.nn.functional.normalize(row, p=2, dim=-1)
        return row.numpy().astype(self.config.dtype, copy=False)

    def _backend_for(self, backend, indices: set[int], need_pooler: bool):
        """`backend` when it computes these layers; else a torch-family one that does (cheap: it shares the
        model's weights), for requests asking for other layers than the encoder's own."""
        if indices <= set(backend.hidden_indices) and (not need_pooler or getattr(backend, "need_pooler", False)):
            return backend
        key = (tuple(sorted(indices | set(backend.hidden_indices))), need_pooler or self.need_pooler)
        if key not in self._extra_backends:
            name = backend.name if backend.name in ("torch", "bf16") else "torch"
            self._extra_backends[key] = make_backend(name, self.checkpoint, key[0], key[1], self.use_type_ids,
                                                     self.config.num_threads)
        return self._extra_backends[key]

    def _embed_batch(self, ids: list[list[int]], type_ids: list[list[int]], variants: list["Variant"],
                     out_len: dict[int, int], backend) -> list[torch.Tensor]:
        batch = pad_batch(ids, self.tokenizer.pad_id, type_ids if self.use_type_ids else None)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        length = input_ids.shape[1]
        groups: dict[int, list[int]] = {}
        for row, v in enumerate(variants):
            groups.setdefault(id(v), []).append(row)
        by_id = {id(v): v for v in variants}
        # one forward pass computing the union of the layers the batch's variants ask for
        needed = {i for v in by_id.values() for i in v.hidden_indices}
        backend = self._backend_for(backend, needed, any(v.config.pooling == "CLS_POOLED" for v in by_id.values()))
        hidden, pooled = backend.forward(input_ids, mask, batch.get("token_type_ids"))
        out: list[torch.Tensor | None] = [None] * len(ids)
        for key, rows in groups.items():
            v, sel = by_id[key], torch.tensor(rows)
            cfg = v.config
            h = torch.cat([hidden[i][sel] for i in v.hidden_indices], dim=-1).float()
            m = mask[sel]
            content = m.bool() & ~torch.isin(input_ids[sel], self._special_ids) if cfg.mask_cls_sep else None
            vectors = pool(cfg.pooling, h, m, content, None if pooled is None else pooled[sel].float())
            if cfg.pooling == "NONE" and out_len[key] > length:
                vectors = torch.nn.functional.pad(vectors, (0, 0, 0, out_len[key] - length))
            for k, row in enumerate(rows):
                out[row] = vectors[k]
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class Variant:
    """The Encoder's settings as one request sees them (its own pooling, layers, ...), with their tokenizer."""
    config: EncoderConfig       # resolved: every option filled in and checked
    tokenizer: TextTokenizer
    hidden_indices: tuple[int, ...]  # cfg.layers as non-negative hidden-state indices, in the asked order
    dim: int
    fixed_length: bool          # pooling NONE pads to max_seq_len (else to the longest text)
