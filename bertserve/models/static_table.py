"""Static token-table model folders (model2vec's format, or a sentence-transformers StaticEmbedding folder):
finding one and loading its table, tokenizer and settings. `bertserve.encode.static` encodes with them.

The folder format is model2vec's (what `model2vec.StaticModel.save_pretrained` writes, and what
sentence-transformers loads as a `StaticEmbedding` module through the folder's modules.json):

    config.json          {"model_type": "model2vec", "normalize": ..., "max_length": ..., "hidden_dim": ...}
    model.safetensors    "embeddings": (vocab, dim) table; optional "weights" (per token) and "mapping" (token ->
                         row), which model2vec's vocabulary quantization writes
    tokenizer.json       a Hugging Face fast tokenizer
    modules.json         StaticEmbedding at ".", then Normalize when "normalize" is on
    1_Normalize/

A folder sentence-transformers saved itself (modules.json whose first module is a StaticEmbedding, key
"embedding.weight") loads too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertserve.models.checkpoint import CheckpointError

_DEFAULT_MAX_LENGTH = 512  # model2vec's default when a config has no max_length


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _static_module_path(folder: Path) -> Path | None:
    """The StaticEmbedding folder a sentence-transformers modules.json names first, if it names one."""
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list) and modules and isinstance(modules[0], dict):
        if str(modules[0].get("type", "")).endswith("StaticEmbedding"):
            return folder / modules[0].get("path", ".")
    return None


def is_static_folder(path) -> bool:
    """A model2vec folder (config.json model_type "model2vec") or a sentence-transformers StaticEmbedding one."""
    if path is None:
        return False
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return False
    config = _read_json(folder / "config.json")
    if isinstance(config, dict) and config.get("model_type") == "model2vec":
        return True
    return _static_module_path(folder) is not None


@dataclass
class StaticTable:
    """The loaded folder: the table (one row per token id, weights and mapping folded in), tokenizer, config."""

    path: Path
    vectors: np.ndarray  # (vocab, dim) float32
    tokenizer: object  # tokenizers.Tokenizer
    config: dict
    normalize: bool
    max_length: int | None
    format: str = "model2vec"

    @classmethod
    def load(cls, path) -> "StaticTable":
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(path).expanduser()
        config = _read_json(folder / "config.json")
        fmt = "model2vec"
        module = folder
        if not (isinstance(config, dict) and config.get("model_type") == "model2vec"):
            module = _static_module_path(folder)
            if module is None:
                raise CheckpointError(f"{folder} is not a static model folder (model2vec or StaticEmbedding)")
            config, fmt = {}, "sentence-transformers"
            modules = _read_json(folder / "modules.json") or []
            config["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
            config["max_length"] = None  # StaticEmbedding does not truncate
        for name in ("model.safetensors", "tokenizer.json"):
            if not (module / name).is_file():
                raise CheckpointError(f"missing file: {module / name}")
        try:
            tensors = load_file(str(module / "model.safetensors"))
        except Exception as e:  # safetensors raises its own untyped errors
            raise CheckpointError(f"cannot read {module / 'model.safetensors'}: {e}") from e
        table = tensors.get("embeddings", tensors.get("embedding.weight"))
        if table is None or table.ndim != 2:
            raise CheckpointError(f"{module / 'model.safetensors'} has no 2-d 'embeddings' table")
        table = table.astype(np.float32)
        if "mapping" in tensors:
            table = table[tensors["mapping"].astype(np.int64)]
        if "weights" in tensors:
            table = table * tensors["weights"].astype(np.float32)[:, None]
        try:
            tokenizer = Tokenizer.from_file(str(module / "tokenizer.json"))
        except Exception as e:
            raise CheckpointError(f"cannot load {module / 'tokenizer.json'}: {e}") from e
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if tokenizer.get_vocab_size() > len(table):
            raise CheckpointError(f"{folder}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the table "
                                  f"{len(table)} rows")
        max_length = config.get("max_length", _DEFAULT_MAX_LENGTH)
        return cls(path=folder, vectors=np.ascontiguousarray(table), tokenizer=tokenizer, config=config,
                   normalize=bool(config.get("normalize", False)), max_length=max_length, format=fmt)


@dataclass
class StaticCheckpoint:
    """What `Encoder.checkpoint` holds for a transformer, for a static table: path and `info()`."""

    table: StaticTable
    name: str | None = None  # a static table is loaded by folder, never by a registered name
    prompts: dict = field(default_factory=dict)  # nor does it carry prompts

    @property
    def path(self) -> Path:
        return self.table.path

    def info(self) -> dict:
        t = self.table
        return {"path": str(t.path), "format": t.format, "model_type": "static", "architecture": "StaticModel",
                "layers": 0, "hidden_size": int(t.vectors.shape[1]), "vocab_size": int(t.vectors.shape[0]),
                "max_positions": t.max_length, "default_pooling": "REDUCE_MEAN", "default_normalize": t.normalize,
                "parameters": int(t.vectors.size),
                "distilled_from": t.config.get("base_model") or t.config.get("tokenizer_name")}
