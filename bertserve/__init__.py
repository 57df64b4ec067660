"""bertserve: BERT-family text vectors, served, searched and distilled. Offline.

`import bertserve` is cheap: the names below are loaded on first use (module `__getattr__`), so the HTTP
client, `bertserve --help` and anything else that needs no model never pay for torch or faiss.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bertserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it, imported when the name is first asked for
_LAZY = {
    "Encoder": "bertserve.encode",
    "EncoderConfig": "bertserve.encode",
    "Collection": "bertserve.search",
    "CheckpointError": "bertserve.models",
    "Client": "bertserve.client",
    "AsyncClient": "bertserve.client",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bertserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
