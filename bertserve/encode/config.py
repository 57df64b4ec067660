"""EncoderConfig: every encoding option in one place, with its default."""
from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from bertserve.encode.backends import BACKENDS
from bertserve.encode.backends.quality import QualityGate
from bertserve.errors import BadInput

DTYPES = ("float32", "float16")
LONG_TEXT_MODES = ("truncate", "chunk")
# Pooling names are bert-as-service's (case-insensitive), plus REDUCE_MEAN_SQRT_LEN for sentence-transformers.
ALIASES = {"CLS_TOKEN": "FIRST_TOKEN", "SEP_TOKEN": "LAST_TOKEN"}
STRATEGIES = ("REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "FIRST_TOKEN", "CLS_TOKEN", "LAST_TOKEN",
              "SEP_TOKEN", "CLS_POOLED", "NONE", "REDUCE_MEAN_SQRT_LEN")


def canonical_pooling(name: str) -> str:
    """The canonical upper-case name of a pooling strategy; BadInput listing the valid ones otherwise."""
    if not isinstance(name, str) or name.upper() not in STRATEGIES:
        raise BadInput(f"unknown pooling {name!r}; valid: {', '.join(STRATEGIES)}")
    upper = name.upper()
    return ALIASES.get(upper, upper)


def _positive_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInput(f"{name} must be an int >= {low}, got {value!r}")
# "auto", unless $BERTSERVE_BACKEND names another: one switch for a whole deployment (or a test session that
# compares values at 1e-5 and wants the exact reference everywhere) without touching code or config files.
from bertserve.settings import BACKEND_ENV, default_backend  # noqa: E402,F401


@dataclass
class EncoderConfig:
    model: str | None = None  # a folder; None: the bundled all-MiniLM-L6-v2
    pooling: str | None = None  # None: the checkpoint's own (sentence-transformers config), else REDUCE_MEAN
    layers: tuple[int, ...] | None = None  # None: (-1,), the last layer; 0 is the embedding output
    max_seq_len: int | str | None = "auto"  # "auto": sentence-transformers' setting or the model's maximum
    normalize: bool | None = None  # None: the checkpoint's own (True where it has a Normalize module)
    mask_cls_sep: bool = False
    batch_size: int = 32
    long_text: str = "truncate"  # or "chunk"
    chunk_overlap: int | None = None  # tokens shared by neighbouring windows; None: a quarter window
    dtype: str = "float32"
    backend: str = field(default_factory=default_backend)  # "torch" (exact reference), "onnx", "onnx-int8", "bf16", or "auto": the fastest passing the gate
    auto_gate: QualityGate | None = None  # None: QualityGate() (mean cos 0.995, min cos 0.98, top-10 overlap 0.95)
    auto_sample: int = 400  # real sentences `auto` measures the candidates on (once; the decision is cached)
    num_threads: int | None = None  # None: torch's default (all cores)

    def __post_init__(self):
        """Every check that needs no model, so a typo fails before seconds of loading (the rest, such as a
        layer beyond the model's depth, is checked by the Encoder once the checkpoint is read)."""
        if self.pooling is not None:
            canonical_pooling(self.pooling)
        if self.dtype not in DTYPES:
            raise BadInput(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.long_text not in LONG_TEXT_MODES:
            raise BadInput(f"long_text must be one of {LONG_TEXT_MODES}, got {self.long_text!r}")
        _positive_int("batch_size", self.batch_size)
        _positive_int("auto_sample (sentences measured by backend='auto')", self.auto_sample, 20)
        if self.num_threads is not None:
            _positive_int("num_threads", self.num_threads)
        if self.chunk_overlap is not None:
            _positive_int("chunk_overlap", self.chunk_overlap, 0)
        m = self.max_seq_len
        if not (m is None or m == "auto" or (isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 3)):
            raise BadInput(f"max_seq_len must be an int between 3 and the model's maximum, None or 'auto', got {m!r}")
        if self.backend not in BACKENDS:
            raise BadInput(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInput(f"unknown encoder option(s): {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("auto_gate"), dict):
            d["auto_gate"] = QualityGate(**d["auto_gate"])
        if isinstance(d.get("layers"), list):
            d["layers"] = tuple(d["layers"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "EncoderConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
