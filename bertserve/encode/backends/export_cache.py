"""The on-disk cache of exported graphs and `auto` decisions.

Entries live under $BERTSERVE_CACHE (default ~/.cache/bertserve), one folder per key. A key covers the model's
content (a hash of its weight and config bytes, not its path), the outputs the export exposes, the variant and
the versions of everything that produced it, so a changed model or an upgraded exporter never meets an old
entry. Files are written to a temporary name and renamed into place: a crash leaves no half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from bertserve.errors import BadInput
from bertserve.settings import cache_dir

CACHE_FORMAT = 1  # bump when the layout of an entry changes
_HASH_INDEX = "content-hashes.json"
_CONTENT_SUFFIXES = (".safetensors", ".bin", ".json", ".h5", ".msgpack")


def cache_root() -> Path:
    return cache_dir()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable (a damaged entry counts as absent)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streams: a large model is never held in memory


def file_hash(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so an unchanged 400 MB model is read only once."""
    stat = path.stat()
    stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_file = cache_root() / _HASH_INDEX
    index = read_json(index_file) or {}
    if stamp not in index:
        index = {k: v for k, v in index.items() if not k.startswith(f"{path.resolve()}|")}
        index[stamp] = _file_sha256(path)
        write_json(index_file, index)
    return index[stamp]


def model_content_hash(folder: Path) -> str:
    """One hash over the files that decide what the model computes (weights and configs) in its folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _CONTENT_SUFFIXES)
    if not files:
        raise BadInput(f"no weight or config files in {folder}")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{file_hash(p)}\n".encode())
    return digest.hexdigest()


def checkpoint_content_hash(checkpoint) -> str:
    """The content hash of the folder the checkpoint's transformer weights came from (a sentence-transformers
    folder may keep them in a sub-folder; a converted TF checkpoint in its converted folder)."""
    model = getattr(checkpoint, "model", None)  # a static table has no transformer: its folder is the content
    folder = Path(getattr(model, "name_or_path", "") or checkpoint.path)
    return model_content_hash(folder if folder.is_dir() else Path(checkpoint.path))


def tool_versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "cache_format": CACHE_FORMAT}


def entry_key(kind: str, **fields) -> tuple[str, dict]:
    """A folder name for a cache entry and the description it was derived from (kept in the entry to read)."""
    described = {"kind": kind, **fields, "versions": tool_versions()}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]
    return f"{kind}-{key}", described


def entry_dir(name: str) -> Path:
    return cache_root() / name
