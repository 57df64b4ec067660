"""Model folders bertserve writes itself (a model rebuilt from a package's own file format), cached on disk.

A built folder is named after what made it: the builder's format version and the SHA-256 of every source
file, so a new package release or a new builder gets a new folder and an old one is never read by mistake.
Every file written is listed with its size and SHA-256 in `MANIFEST`; a folder whose files do not match
(a disk error, a user's edit, a copy cut short) is rebuilt rather than loaded. Building happens in a
temporary folder that is renamed into place, so a reader never sees a half-written folder and two processes
building at once both end with a whole one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from bertserve.settings import cache_dir

log = logging.getLogger(__name__)

MANIFEST = "bertserve_build.json"
_STALE_SECONDS = 3600  # a temporary build folder older than this was left by a killed process
_verified: set[tuple] = set()  # (folder, size and mtime of each file) already hashed by this process


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def source_key(version: int, sources: Sequence[Path]) -> str:
    """What names a built folder: the builder's version and the content of each source file."""
    h = hashlib.sha256(f"v{version}".encode())
    for src in sources:
        h.update(b"|" + file_sha256(Path(src)).encode())
    return h.hexdigest()[:16]


def _write_manifest(folder: Path, info: dict) -> None:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    (folder / MANIFEST).write_text(json.dumps({**info, "files": files}, indent=1), encoding="utf-8")


def damage(folder: Path) -> str | None:
    """Why `folder` cannot be trusted (missing manifest, missing or changed file), or None when it is whole."""
    manifest = folder / MANIFEST
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"no readable {MANIFEST} ({type(e).__name__})"
    stats = []
    for name, want in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        st = p.stat()
        if st.st_size != want["size"]:
            return f"{name} has {st.st_size} bytes, {want['size']} were written"
        stats.append((name, st.st_size, st.st_mtime_ns))
    key = (str(folder), tuple(stats))
    if key in _verified:  # unchanged since this process hashed it
        return None
    for name, want in files.items():
        if file_sha256(folder / name) != want["sha256"]:
            return f"{name} does not match the SHA-256 recorded when it was built"
    _verified.add(key)
    return None


def ensure_built(name: str, version: int, sources: Sequence[Path], build: Callable[[Path], None],
                 root: Path | None = None) -> Path:
    """The folder `build(folder)` writes for these sources, built now unless a whole copy is cached.

    `build` fills an empty folder; the manifest is added here."""
    root = Path(root) if root is not None else cache_dir("models")
    key = source_key(version, sources)
    target = root / f"{name}-{key}"
    if target.is_dir():
        why = damage(target)
        if why is None:
            return target
        log.warning("cached model %s is damaged (%s): rebuilding it", target, why)
        shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".building-*"):
        if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=root))
    log.info("building %s into %s (once; later loads read the cache)", name, target)
    t0 = time.perf_counter()
    try:
        build(tmp)
        _write_manifest(tmp, {"name": name, "version": version, "key": key,
                              "sources": [str(Path(s).resolve()) for s in sources]})
        try:
            os.replace(tmp, target)
        except OSError:
            if damage(target) is not None:  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1f s", name, time.perf_counter() - t0)
    return target
