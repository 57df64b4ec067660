"""EncoderConfig: every encoding option in one place, with its default."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from bertserve.encode.backends.quality import QualityGate

DTYPES = ("float32", "float16")
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
    prompt: str | None = None  # the model's prompt applied when a call names none (e5: "query"); None: no prompt

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown encoder option(s): {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("auto_gate"), dict):
            d["auto_gate"] = QualityGate(**d["auto_gate"])
        if isinstance(d.get("layers"), list):
            d["layers"] = tuple(d["layers"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "EncoderConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
