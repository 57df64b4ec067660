"""KD losses against hand-computed values, data files, augmentation, metrics, small-student builders."""
import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from bertserve.distill.augment import AugmentConfig, augment_tokens
from bertserve.distill.data import read_text_set
from bertserve.distill.losses import (IntermediateLoss, LossConfig, check_intermediate, default_layer_map,
                                      hard_label_loss, logit_mse, prediction_loss, soft_target_loss, temperature_at)
from bertserve.distill.report import classification_metrics
from bertserve.distill.small_students import SmallStudent, SmallStudentConfig, parse_small_spec

S = torch.tensor([[1.0, 2.0]])
T = torch.tensor([[2.0, 1.0]])
# T=2: softmax(T/2) = [a, 1-a], softmax(S/2) = [1-a, a] with a = sigmoid(0.5), and log(a/(1-a)) = 0.5, so
# KL = (2a - 1) * 0.5; times T^2 = 4 gives 2 * (2a - 1).
A = 1 / (1 + math.exp(-0.5))
KL_T2 = 2 * (2 * A - 1)                     # 0.48983...
CE_S_LABEL0 = math.log(1 + math.e)          # -log softmax([1, 2])[0]


def test_soft_target_loss_hand_value_and_t_squared():
    assert soft_target_loss(S, T, 2.0).item() == pytest.approx(KL_T2, rel=1e-5)
    raw_kl = KL_T2 / 4
    assert soft_target_loss(S, T, 2.0).item() / 4 == pytest.approx(raw_kl, rel=1e-5)


def test_t_equals_one_is_plain_kl_of_softmaxes():
    s, t = torch.tensor([[0.3, -1.2, 2.0]]), torch.tensor([[1.0, 0.0, -0.5]])
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    expected = float((p * (p / q).log()).sum())
    assert soft_target_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_loss(t, t, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_alpha_mixing_and_hard_labels():
    labels = torch.tensor([0])
    for alpha in (0.0, 0.3, 1.0):
        cfg = LossConfig(alpha=alpha, temperature=2.0)
        got = prediction_loss(S, T, labels, cfg, 2.0).item()
        assert got == pytest.approx(alpha * KL_T2 + (1 - alpha) * CE_S_LABEL0, rel=1e-5)
    # unlabelled rows (-1) take no part in the cross-entropy
    two = torch.cat([S, T])
    assert hard_label_loss(two, torch.tensor([0, -1])).item() == pytest.approx(CE_S_LABEL0, rel=1e-5)
    assert hard_label_loss(two, torch.tensor([-1, -1])).item() == 0.0
    mse = prediction_loss(S, T, labels, LossConfig(alpha=1.0, soft="mse"), 4.0).item()
    assert mse == pytest.approx(1.0) == logit_mse(S, T).item()


def test_temperature_schedule():
    const = LossConfig(temperature=4.0)
    assert temperature_at(const, 0, 10) == temperature_at(const, 9, 10) == 4.0
    anneal = LossConfig(temperature=4.0, schedule="anneal")
    assert [temperature_at(anneal, s, 4) for s in range(4)] == pytest.approx([4.0, 3.0, 2.0, 1.0])


@pytest.mark.parametrize("kwargs,words", [
    ({"temperature": 0}, "temperature must be > 0"), ({"temperature": -1.0}, "temperature must be > 0"),
    ({"alpha": 1.5}, r"alpha must lie in \[0, 1\]"), ({"alpha": -0.1}, "alpha must lie"),
    ({"schedule": "cosine"}, "schedule"), ({"soft": "js"}, "soft loss"), ({"hidden_weight": -1}, "hidden_weight")])
def test_bad_loss_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LossConfig(**kwargs)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_loss(S, T, 0.0)


def _cfg(layers=12, hidden=384, heads=12, vocab=1000):
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, vocab_size=vocab)


def test_intermediate_compatibility_errors_suggest_a_fix():
    teacher = _cfg()
    with pytest.raises(ValueError, match="bert:layers=3"):
        check_intermediate(LossConfig(hidden_weight=1.0), teacher, None, "bilstm")
    with pytest.raises(ValueError, match="heads=12"):
        check_intermediate(LossConfig(attention_weight=1.0), teacher, _cfg(4, 312, 4), "bert")
    with pytest.raises(ValueError, match="share a tokenizer"):
        check_intermediate(LossConfig(hidden_weight=1.0), teacher, _cfg(3, vocab=21128), "bert")
    with pytest.raises(ValueError, match=r"outside the teacher's layers 1..12"):
        check_intermediate(LossConfig(hidden_weight=1.0, layer_map=(4, 8, 13)), teacher, _cfg(3), "bert")
    with pytest.raises(ValueError, match=r"e.g. \[4, 8, 12\]"):
        check_intermediate(LossConfig(hidden_weight=1.0, layer_map=(4, 8)), teacher, _cfg(3), "bert")
    # a narrower student is fine for hidden states (projection), and for attention when heads match
    assert check_intermediate(LossConfig(hidden_weight=1.0, attention_weight=1.0), teacher, _cfg(4, 312, 12), "bert") \
        == default_layer_map(4, 12) == (3, 6, 9, 12)
    assert check_intermediate(LossConfig(), teacher, None, "textcnn") == ()


def test_intermediate_loss_projection_and_masking():
    torch.manual_seed(0)
    cfg = LossConfig(hidden_weight=1.0, embedding_weight=1.0, attention_weight=1.0, layer_map=(2,))
    loss = IntermediateLoss(cfg, _cfg(2, 8, 2), _cfg(1, 4, 2), (2,))
    mask = torch.tensor([[1, 1, 0]])
    hs = tuple(torch.randn(1, 3, 4) for _ in range(2))
    student = SimpleNamespace(hidden_states=hs, attentions=(torch.softmax(torch.randn(1, 2, 3, 3), -1),))
    t_hidden = {0: loss.project_embedding(hs[0]).detach(), 2: loss.project_hidden(hs[1]).detach()}
    t_attn = {2: student.attentions[0].clone()}
    assert loss.teacher_layers() == {"hidden": [0, 2], "attention": [2]}
    assert loss(student, t_hidden, t_attn, mask).item() == pytest.approx(0.0, abs=1e-6)
    # a difference only at the padded position does not count
    t_hidden[2] = t_hidden[2].clone()
    t_hidden[2][0, 2] += 100.0
    assert loss(student, t_hidden, t_attn, mask).item() == pytest.approx(0.0, abs=1e-6)
    t_hidden[2][0, 0] += 1.0  # 8 squared errors of 1 over 2 real tokens x 8 dims
    assert loss(student, t_hidden, t_attn, mask).item() == pytest.approx(8 / (2 * 8), rel=1e-4)


def test_metrics_on_fixed_predictions():
    y_true = [0, 0, 1, 1, 2, 2, -1]
    y_pred = [0, 1, 1, 1, 0, 2, 2]
    m = classification_metrics(y_true, y_pred, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # label 0: tp1 fp1 fn1 -> 0.5; label 1: tp2 fp1 fn0 -> 0.8; label 2: tp1 fp0 fn1 -> 2/3
    assert m["per_label_f1"] == pytest.approx([0.5, 0.8, 2 / 3])
    assert m["macro_f1"] == pytest.approx(f1_score(y_true[:6], y_pred[:6], average="macro"))
    with pytest.raises(ValueError, match="no labelled"):
        classification_metrics([-1], [0], 2)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_data_formats(tmp_path):
    rows = [{"text": "好", "label": "pos"}, {"text": "差", "label": "neg"}, {"text": "一般", "label": "neg"}]
    jl = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    csv_ = _write(tmp_path / "a.csv", "text,label\n好,pos\n差,neg\n\"一般, 还行\",neg\n")
    tsv = _write(tmp_path / "a.tsv", "text\ttext_b\tlabel\n好\t很好\tpos\n差\t不好\tneg\n")
    a, b, c = read_text_set(jl), read_text_set(csv_), read_text_set(tsv)
    assert a.label_names == b.label_names == c.label_names == ["neg", "pos"]
    assert a.label_ids() == [1, 0, 0] and b.texts[2] == "一般, 还行"
    assert c.has_pairs and c.texts_b == ["很好", "不好"]
    numeric = read_text_set(_write(tmp_path / "n.csv", "text,label\na,10\nb,2\nc,1\n"))
    assert numeric.label_names == ["1", "2", "10"]
    unl = read_text_set(_write(tmp_path / "u.txt", "一\n\n二\n"), labels="ignore")
    assert unl.texts == ["一", "二"] and unl.label_ids() == [-1, -1]


@pytest.mark.parametrize("name,content,kwargs,words", [
    ("e.jsonl", "", {}, "empty data file"),
    ("e.csv", "text,label\n", {}, "empty data file"),
    ("m.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', {}, r"m.jsonl:2: missing label"),
    ("m.csv", "text,label\na,x\nb,\n", {}, "missing label"),
    ("u.jsonl", '{"text": "a", "label": "maybe"}\n', {"label_names": ["neg", "pos"]}, "unknown label 'maybe'"),
    ("t.jsonl", '{"label": "x"}\n', {}, "missing or empty 'text'"),
    ("h.csv", "sentence,label\na,x\n", {}, "no 'text' column"),
    ("j.jsonl", "{not json\n", {}, "not valid JSON"),
    ("one.jsonl", '{"text": "a", "label": "x"}\n', {}, "at least 2 distinct labels"),
    ("f.xml", "<a/>", {}, "unknown data format"),
])
def test_bad_data_files(tmp_path, name, content, kwargs, words):
    with pytest.raises(ValueError, match=words):
        read_text_set(_write(tmp_path / name, content), **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_text_set(tmp_path / "nope.jsonl")


def test_augmentation_masks_and_samples_ngrams():
    tokens = list("这本书写得非常好看")
    rng = random.Random(0)
    masked = augment_tokens(tokens, "[MASK]", AugmentConfig(p_mask=1.0, p_ngram=0.0), rng)
    assert masked == ["[MASK]"] * len(tokens)
    assert augment_tokens(tokens, "[MASK]", AugmentConfig(p_mask=0.0, p_ngram=0.0), rng) == tokens
    for _ in range(20):
        cut = augment_tokens(tokens, "[MASK]", AugmentConfig(p_mask=0.0, p_ngram=1.0, ngram_range=(2, 3)), rng)
        assert 2 <= len(cut) <= 3 and "".join(cut) in "".join(tokens)
    some = [augment_tokens(tokens, "M", AugmentConfig(p_mask=0.3, p_ngram=0.0), rng).count("M") for _ in range(200)]
    assert 0.2 < np.mean(some) / len(tokens) < 0.4
    with pytest.raises(ValueError, match="p_mask"):
        AugmentConfig(p_mask=1.5)


@pytest.mark.parametrize("kind", ["bilstm", "textcnn"])
def test_small_student_shapes_and_padding_invariance(kind):
    torch.manual_seed(0)
    cfg = SmallStudentConfig(kind=kind, embedding_dim=16, hidden=8, widths=(2, 3), dropout=0.0, num_labels=3,
                             teacher_vocab_size=50, vocab_size=10, unk_index=1, pad_index=0)
    model = SmallStudent(cfg).eval()
    model.id_map[:10] = torch.arange(10)
    ids = torch.tensor([[5, 6, 7, 0, 0], [3, 4, 5, 6, 7]])
    mask = (ids != 0).long()
    logits = model(ids, mask)
    assert logits.shape == (2, 3)
    # the same text without padding gives the same logits: padding is invisible to the student
    assert torch.allclose(model(ids[:1, :3], mask[:1, :3]), logits[:1], atol=1e-5)
    # one-token text is shorter than the widest convolution and still works
    assert model(torch.tensor([[5]]), torch.tensor([[1]])).shape == (1, 3)


def test_small_spec_parsing():
    c = parse_small_spec("textcnn:widths=2-3-4,hidden=64,init=0")
    assert (c.kind, c.widths, c.hidden, c.init_embeddings) == ("textcnn", (2, 3, 4), 64, False)
    assert parse_small_spec("bilstm").kind == "bilstm"
    for bad, words in [("gru", "unknown small student"), ("bilstm:depth=2", "unknown option"),
                       ("bilstm:hidden=big", "bad value")]:
        with pytest.raises(ValueError, match=words):
            parse_small_spec(bad)
