"""The Encoder pipeline: tokenizer -> backend -> pooling -> normalize.

Names load on first use (as in `bertserve/__init__.py`), so `bertserve.encode.cli` and the CLI's `--help`
can import this package without paying for torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Encoder": ("bertserve.encode.encoder", "Encoder"),
    "EncoderConfig": ("bertserve.encode.config", "EncoderConfig"),
    "POOLING_STRATEGIES": ("bertserve.encode.pooling", "STRATEGIES"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bertserve.encode' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
