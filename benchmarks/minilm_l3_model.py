"""paraphrase-MiniLM-L3-v2 for the benchmarks: the package's named model (bertserve/models/onnx_minilm.py).

    python benchmarks/minilm_l3_model.py      # build (if needed) and compare with onnxruntime on the same tokens
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bertserve.models.onnx_minilm import onnx_file, read_state_dict  # noqa: E402,F401


def minilm_l3_path() -> Path:
    from bertserve.models.registry import REGISTRY
    return REGISTRY["paraphrase-MiniLM-L3-v2"].locate()


def check_against_onnx(texts: list[str]) -> float:
    """Smallest cosine between our mean-pooled vectors and the ONNX graph's token outputs, mean-pooled."""
    import onnxruntime as ort
    from bertserve import Encoder

    enc = Encoder("paraphrase-MiniLM-L3-v2")
    ours = enc.encode(texts)
    tok = enc.checkpoint.tokenizer(texts, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_file()), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": tok["input_ids"].astype(np.int64), "attention_mask": tok["attention_mask"].astype(np.int64)}
    outs = sess.run(None, feeds)
    mask = tok["attention_mask"][..., None].astype(np.float32)
    token_out = next(o for o in outs if o.ndim == 3 and o.shape[:2] == mask.shape[:2])
    theirs = (token_out * mask).sum(1) / mask.sum(1)
    cos = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return float(cos.min())


if __name__ == "__main__":
    print("min cosine to the ONNX graph:", check_against_onnx(
        ["A man is playing a guitar.", "The bank raised interest rates on Tuesday.", "hello"]))
