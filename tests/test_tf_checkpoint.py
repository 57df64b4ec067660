"""Google TensorFlow BERT checkpoints read without TensorFlow.

The fixtures in tests/data/tf_bert_tiny/ were written by TensorFlow 2.21 itself (tf.compat.v1 Saver with
Google's variable names; SaveV2 + MergeV2Checkpoints for the sharded one) from the weights of the HF
folder beside them; tests/data/make_tf_bert_tiny.py regenerates them where TensorFlow is installed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer, BertModel, BertTokenizerFast

from bertserve.models import google_bert
from bertserve.models.crc32c import crc32c, unmask
from bertserve.models.google_bert import (convert_tf_checkpoint, ensure_converted, is_tf_checkpoint,
                                          load_tf_checkpoint)
from bertserve.models.tf_checkpoint import CheckpointError, TensorBundle, find_checkpoint_prefix

DATA = Path(__file__).parent / "data" / "tf_bert_tiny"
GOOGLE = DATA / "chinese_L-2_H-32_A-2"
HF = DATA / "hf"
SHARDED = DATA / "sharded" / "mixed"
TEXTS = ["我爱北京天安门", "Hello World, 你好！", "今年很高兴认识你们 ||| the good world", "", "ABC 模型"]


@pytest.fixture
def google_copy(tmp_path):
    dst = tmp_path / "chinese_L-2_H-32_A-2"
    shutil.copytree(GOOGLE, dst)
    return dst


def hf_weights() -> dict:
    return load_file(str(HF / "model.safetensors"))


# --- the reader ---------------------------------------------------------------------------------

def test_reader_lists_every_variable_with_shape_dtype_and_values_of_the_hf_weights():
    bundle = TensorBundle(find_checkpoint_prefix(GOOGLE))
    hf = hf_weights()
    names = bundle.names()
    # 5 embedding + 2 x 16 layer + 2 pooler + 7 pre-training head variables, and global_step.
    assert len(names) == 47
    assert bundle.entries["bert/encoder/layer_1/attention/self/query/kernel"].shape == (32, 32)
    assert bundle.entries["bert/encoder/layer_0/intermediate/dense/kernel"].shape == (32, 40)
    assert bundle.entries["global_step"].dtype == "<i8"
    assert bundle.read("global_step") == 1000
    # A few by hand: TF kernels are [in, out], LayerNorm gamma/beta are weight/bias.
    np.testing.assert_array_equal(bundle.read("bert/embeddings/word_embeddings"),
                                  hf["bert.embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(bundle.read("bert/encoder/layer_1/intermediate/dense/kernel"),
                                  hf["bert.encoder.layer.1.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(bundle.read("bert/encoder/layer_0/output/LayerNorm/gamma"),
                                  hf["bert.encoder.layer.0.output.LayerNorm.weight"])
    np.testing.assert_array_equal(bundle.read("cls/seq_relationship/output_weights"),
                                  hf["cls.seq_relationship.weight"])
    np.testing.assert_array_equal(bundle.read("cls/predictions/output_bias"), hf["cls.predictions.bias"])
    # And every encoder variable through the name mapping.
    for name in names:
        key = google_bert.hf_name(name)
        if key is None:
            continue
        value = bundle.read(name)
        assert value.dtype == np.float32
        expected = hf["bert." + key]
        np.testing.assert_array_equal(value.T if name.endswith("/kernel") else value, expected, err_msg=name)


def test_reader_handles_shards_and_dtypes_written_by_tensorflow():
    bundle = TensorBundle(SHARDED)
    expected = np.load(DATA / "sharded" / "expected.npz")
    assert bundle.num_shards == 2
    assert {e.shard_id for e in bundle.entries.values()} == {0, 1}
    for key in expected.files:
        value = bundle.read(key.replace("__", "/"))
        want = expected[key]
        assert value.dtype == want.dtype and value.shape == want.shape, key
        np.testing.assert_array_equal(value, want, err_msg=key)
    assert bundle.entries["b/bfloat16"].dtype == "bfloat16"  # widened to float32 when read
    with pytest.raises(CheckpointError, match="strings"):
        bundle.read("b/string")
    with pytest.raises(KeyError, match="no/such"):
        bundle.read("no/such")


def _bitwise_crc32c(data: bytes) -> int:
    """The CRC-32C recurrence bit by bit (reflected polynomial 0x82F63B78): an independent reference."""
    reg = 0xFFFFFFFF
    for b in data:
        reg ^= b
        for _ in range(8):
            reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
    return reg ^ 0xFFFFFFFF


def test_crc32c_matches_known_values_and_the_bitwise_definition():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vectors
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    data = np.random.default_rng(1).integers(0, 256, 3_001, dtype=np.uint8)
    assert crc32c(data) == crc32c(data.tobytes()) == _bitwise_crc32c(data.tobytes())
    floats = np.random.default_rng(2).standard_normal((7, 5)).astype("<f4")[:, 1:4]  # not contiguous
    assert crc32c(floats) == _bitwise_crc32c(np.ascontiguousarray(floats).tobytes())
    big = np.random.default_rng(3).integers(0, 256, 17 << 20, dtype=np.uint8)  # fed in several slices
    assert crc32c(big) == crc32c(big.tobytes())
    assert unmask(mask(0x12345678)) == 0x12345678


def test_checkpoint_file_picks_the_prefix_among_several(tmp_path):
    for stem in ("model.ckpt-100", "model.ckpt-200"):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copyfile(GOOGLE / f"bert_model.ckpt{suffix}", tmp_path / f"{stem}{suffix}")
    with pytest.raises(CheckpointError, match="several checkpoints"):
        find_checkpoint_prefix(tmp_path)
    # Saver writes the training machine's absolute path; only the file name counts.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/train/out/model.ckpt-200"\n')
    assert find_checkpoint_prefix(tmp_path) == tmp_path / "model.ckpt-200"


# --- conversion -----------------------------------------------------------------------------------

def hidden_states(model, tokenizer, texts):
    pairs = [t.split(" ||| ") for t in texts]
    firsts = [p[0] for p in pairs]
    seconds = [p[1] if len(p) > 1 else None for p in pairs]
    outputs = []
    with torch.no_grad():
        for a, b in zip(firsts, seconds):
            enc = tokenizer(a, b, return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            outputs.append((enc["input_ids"], out.hidden_states, out.pooler_output))
    return outputs


def test_converted_model_reproduces_the_hf_model(tmp_path):
    model, tokenizer = load_tf_checkpoint(GOOGLE, cache_dir=tmp_path)
    ref_model = BertModel.from_pretrained(HF).eval()
    ref_tok = BertTokenizerFast.from_pretrained(HF)
    assert tokenizer.tokenize("我爱北京天安门") == list("我爱北京天安门")
    assert tokenizer.tokenize("HELLO World") == ["hello", "world"]  # chinese_* folders lower-case
    assert tokenizer.model_max_length == 40
    got, want = hidden_states(model, tokenizer, TEXTS), hidden_states(ref_model, ref_tok, TEXTS)
    for (ids, hs, pooled), (ref_ids, ref_hs, ref_pooled) in zip(got, want):
        assert torch.equal(ids, ref_ids)
        assert len(hs) == 3
        for h, r in zip(hs, ref_hs):
            torch.testing.assert_close(h, r, atol=1e-5, rtol=0)
        torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=0)


def test_convert_writes_a_plain_transformers_folder(tmp_path):
    out = convert_tf_checkpoint(GOOGLE, tmp_path / "out")
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_act"]) == ("bert", 2, "gelu")
    model = AutoModel.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "BertModel"
    assert tokenizer("你好")["input_ids"] == [2, tokenizer.vocab["你"], tokenizer.vocab["好"], 3]
    cased = convert_tf_checkpoint(GOOGLE, tmp_path / "cased", do_lower_case=False)
    assert AutoTokenizer.from_pretrained(cased).tokenize("Hello") == ["[UNK]"]


def test_lower_case_follows_google_folder_names(tmp_path):
    for name, lower in [("chinese_L-12_H-768_A-12", True), ("uncased_L-12_H-768_A-12", True),
                        ("cased_L-12_H-768_A-12", False), ("multi_cased_L-12_H-768_A-12", False),
                        ("my_bert", True)]:
        assert google_bert.infer_lower_case(tmp_path / name) is lower, name


def test_cache_converts_once_and_notices_a_changed_checkpoint(tmp_path, google_copy):
    cache = tmp_path / "cache"
    first = ensure_converted(google_copy, cache_dir=cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted(google_copy, cache_dir=cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    data = google_copy / "bert_model.ckpt.data-00000-of-00001"
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    killed = cache / ".converting-killed"  # what a conversion killed half-way leaves
    killed.mkdir()
    os.utime(killed, (0, 0))
    second = ensure_converted(google_copy, cache_dir=cache)
    assert second != first and (second / "model.safetensors").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".converting")]


def test_detection():
    assert is_tf_checkpoint(GOOGLE)
    assert not is_tf_checkpoint(HF)
    assert not is_tf_checkpoint(DATA / "missing")


# --- bad folders ---------------------------------------------------------------------------------

@pytest.mark.parametrize("missing, pattern", [
    ("bert_config.json", "bert_config.json"),
    ("vocab.txt", "vocab.txt"),
    ("bert_model.ckpt.index", r"\.index"),
    ("bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.data-00000-of-00001"),
])
def test_missing_file_is_named(tmp_path, google_copy, missing, pattern):
    (google_copy / missing).unlink()
    assert is_tf_checkpoint(google_copy)
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=pattern):
        ensure_converted(google_copy, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-converted left behind


def test_truncated_data_shard_is_named(google_copy):
    data = google_copy / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001 is truncated: tensor '.+' needs bytes"):
        TensorBundle(google_copy / "bert_model.ckpt")


def test_corrupt_data_fails_its_checksum(tmp_path, google_copy):
    bundle = TensorBundle(google_copy / "bert_model.ckpt")
    entry = bundle.entries["bert/encoder/layer_1/attention/self/key/kernel"]
    data = google_copy / "bert_model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="layer_1/attention/self/key/kernel.*checksum"):
        convert_tf_checkpoint(google_copy, tmp_path / "out")
    # The check is what catches it: unverified, the flipped bit comes through as a different weight.
    good = TensorBundle(GOOGLE / "bert_model.ckpt").read(entry.name)
    bad = TensorBundle(google_copy / "bert_model.ckpt", verify=False).read(entry.name)
    assert (good != bad).sum() == 1


def test_damaged_index_is_reported(google_copy):
    index = google_copy / "bert_model.ckpt.index"
    raw = index.read_bytes()
    index.write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match="not a TensorFlow V2 checkpoint index"):
        TensorBundle(google_copy / "bert_model.ckpt")
    flipped = bytearray(raw)
    flipped[40] ^= 0x01  # inside a key of the first data block
    index.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="block checksum mismatch"):
        TensorBundle(google_copy / "bert_model.ckpt")


def test_compressed_index_block_is_refused_clearly(google_copy):
    """Mark the first data block snappy-compressed (with a valid checksum): TF never writes that."""
    from bertserve.models.tf_checkpoint import _block_entries, _handle, _index_handle

    index = google_copy / "bert_model.ckpt.index"
    raw = bytearray(index.read_bytes())
    io, isz = _index_handle(bytes(raw))
    _, first_handle = next(iter(_block_entries(bytes(raw[io:io + isz]), "index")))
    off, size, _ = _handle(first_handle)
    raw[off + size] = 1  # the block's compression type byte
    raw[off + size + 1:off + size + 5] = mask(crc32c(bytes(raw[off:off + size + 1]))).to_bytes(4, "little")
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="snappy"):
        TensorBundle(google_copy / "bert_model.ckpt")


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_config_that_disagrees_with_the_weights(tmp_path, google_copy):
    config_path = google_copy / "bert_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, num_hidden_layers=3)))
    with pytest.raises(CheckpointError, match="lacks 16 BERT variables"):
        convert_tf_checkpoint(google_copy, tmp_path / "a")
    config_path.write_text(json.dumps(dict(config, intermediate_size=64)))
    with pytest.raises(CheckpointError, match=r"dense/bias' has shape \(40,\), bert_config.json implies \(64,\)"):
        convert_tf_checkpoint(google_copy, tmp_path / "b")
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "hidden_size"}))
    with pytest.raises(CheckpointError, match="lacks hidden_size"):
        convert_tf_checkpoint(google_copy, tmp_path / "c")
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        convert_tf_checkpoint(google_copy, tmp_path / "d")


@pytest.mark.parametrize("stem, pattern", [
    ("mixed", "unexpected variable 'a/float16'"),
    ("tf2_object", "TF2 object-based checkpoint"),
])
def test_checkpoint_of_another_model_is_refused(tmp_path, stem, pattern):
    """Bundles whose variables are not Google BERT's are not silently half-loaded."""
    folder = tmp_path / "other"
    folder.mkdir()
    for f in SHARDED.parent.glob(f"{stem}.*"):
        shutil.copyfile(f, folder / f.name)
    shutil.copyfile(GOOGLE / "bert_config.json", folder / "bert_config.json")
    shutil.copyfile(GOOGLE / "vocab.txt", folder / "vocab.txt")
    with pytest.raises(CheckpointError, match=pattern):
        convert_tf_checkpoint(folder, tmp_path / "out")


def test_reader_lists_a_keras_object_checkpoint():
    bundle = TensorBundle(SHARDED.parent / "tf2_object")
    assert bundle.entries["_CHECKPOINTABLE_OBJECT_GRAPH"].dtype == "string"
    kernel = [n for n in bundle.names() if "kernel" in n]
    assert len(kernel) == 1 and bundle.read(kernel[0]).shape == (3, 2)
    assert bundle.read("dense/bias/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [0.0, 0.0]  # Keras' zero init


def test_cli_subcommand(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    google_bert.add_parser(parser.add_subparsers())
    args = parser.parse_args(["convert-tf", str(GOOGLE), str(tmp_path / "out"), "--no-lower-case"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["do_lower_case"] is False


# --- through the Encoder and the command line --------------------------------------------------------

@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_encoder_loads_a_google_folder(cache_env):
    from bertserve import Encoder

    enc = Encoder(model=GOOGLE)
    ref = Encoder(model=HF)
    assert enc.checkpoint.format == "tf-checkpoint" and enc.checkpoint.path == GOOGLE
    assert enc.checkpoint.has_pooler and enc.max_seq_len == 40 and enc.dim == 32
    assert list(cache_env.glob("tf-converted/chinese_L-2_H-32_A-2-*/model.safetensors"))
    X, tokens = enc.encode(TEXTS, show_tokens=True)
    assert tokens[0] == ["[CLS]", *"我爱北京天安门", "[SEP]"]
    np.testing.assert_allclose(X, ref.encode(TEXTS), atol=1e-5, rtol=0)
    # REDUCE_MEAN of one unpadded text is the plain mean of the reference model's last layer.
    model = BertModel.from_pretrained(HF).eval()
    ids = BertTokenizerFast.from_pretrained(HF)("我爱北京天安门", return_tensors="pt")
    with torch.no_grad():
        want = model(**ids).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(X[0], want, atol=1e-5, rtol=0)
    for options in ({"pooling": "CLS_POOLED"}, {"pooling": "REDUCE_MEAN_MAX", "layers": (0, -2)}):
        np.testing.assert_allclose(Encoder(model=GOOGLE, **options).encode(TEXTS),
                                   Encoder(model=HF, **options).encode(TEXTS), atol=1e-5, rtol=0)


def test_encoder_names_the_missing_shard(cache_env, google_copy):
    from bertserve import CheckpointError as BertserveCheckpointError
    from bertserve import Encoder

    (google_copy / "bert_model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(BertserveCheckpointError, match="bert_model.ckpt.data-00000-of-00001 not found"):
        Encoder(model=google_copy)


def test_command_line_info_and_convert(cache_env, tmp_path, capsys):
    from bertserve.cli import main

    assert main(["info", "--model", str(GOOGLE), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["layers"], info["vocab_size"], info["has_pooler"]) == ("tf-checkpoint", 2, 93, True)
    assert main(["convert-tf", str(GOOGLE), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["convert-tf", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    assert "nowhere not found" in capsys.readouterr().err
