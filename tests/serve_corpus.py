"""A real English corpus for the serve tests."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def lee_sentences() -> list[str]:
    """Real English news sentences (gensim's Lee background corpus), 4 words or more, in file order."""
    path = Path(importlib.util.find_spec("gensim").origin).parent / "test" / "test_data" / "lee_background.cor"
    text = path.read_text(encoding="utf-8", errors="replace")
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
