"""NER: data conversion and readers, seqeval metrics, subword alignment, a tiny teacher and students trained
on real People's Daily lines, the engine's windows, the CLI and POST /ner over a real server."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertserve.errors import BadInput
from bertserve.tasks.ner.data import (Example, bio_tags, convert_peoples_daily, parse_peoples_daily_line,
                                      peoples_daily_path, read_conll, read_examples, read_jsonl, spans_from_tags,
                                      split_examples, write_jsonl)
from bertserve.tasks.ner.evaluate import entity_scores

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- data

def test_peoples_daily_line_to_spans():
    line = "江/nr  泽民/nr  在/p  北京/ns  会见/v  美国/ns  纽约/ns  市长/n  和/c  新华社/nt  记者/n  李/nr  鹏/nr  。/w"
    ex = parse_peoples_daily_line(line, "x:1")
    assert ex.text == "江泽民在北京会见美国纽约市长和新华社记者李鹏。"
    found = [(ex.text[s:e], label) for s, e, label in ex.entities]
    # a surname and a given name are one person; neighbouring places stay two places
    assert found == [("江泽民", "PER"), ("北京", "LOC"), ("美国", "LOC"), ("纽约", "LOC"), ("新华社", "ORG"),
                     ("李鹏", "PER")]
    tags = bio_tags(ex.text, ex.entities)
    assert tags[:4] == ["B-PER", "I-PER", "I-PER", "O"]
    assert tags[8:12] == ["B-LOC", "I-LOC", "B-LOC", "I-LOC"]
    assert spans_from_tags(tags) == ex.entities


def test_spans_from_broken_bio_are_repaired():
    # model output may start an entity with I- or switch type without B-: each such run is an entity
    assert spans_from_tags(["I-PER", "I-PER", "O", "B-LOC", "I-ORG"]) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "ORG")]


def test_jsonl_and_conll_readers_agree(tmp_path):
    ex = [Example("李鹏在北京。", [(0, 2, "PER"), (3, 5, "LOC")]), Example("新华社报道", [(0, 3, "ORG")])]
    write_jsonl(ex, tmp_path / "a.jsonl")
    conll = []
    for e in ex:
        conll += [f"{c} {t}" for c, t in zip(e.text, bio_tags(e.text, e.entities))] + [""]
    (tmp_path / "a.conll").write_text("\n".join(conll), encoding="utf-8")
    for path in (tmp_path / "a.jsonl", tmp_path / "a.conll"):
        got = read_examples(path)
        assert [(g.text, g.entities) for g in got] == [(e.text, e.entities) for e in ex]
    assert read_conll(tmp_path / "a.conll")[1].source.endswith("a.conll:8")
    # multi-character tokens (English CoNLL) are joined with spaces and offsets follow the joined text
    (tmp_path / "en.conll").write_text("John B-PER\nSmith I-PER\nvisited O\nParis B-LOC\n", encoding="utf-8")
    en = read_conll(tmp_path / "en.conll")[0]
    assert [en.text[s:e] for s, e, _ in en.entities] == ["John Smith", "Paris"]


BAD_FILES = [
    ("overlap.jsonl", '{"text": "李鹏在北京", "entities": [[0, 2, "PER"]]}\n'
                      '{"text": "李鹏在北京", "entities": [[0, 2, "PER"], [1, 3, "LOC"]]}\n', 2, "overlap"),
    ("range.jsonl", '{"text": "北京", "entities": [[0, 3, "LOC"]]}\n', 1, "out of range"),
    ("float.jsonl", '{"text": "北京", "entities": [[0, 1.5, "LOC"]]}\n', 1, "integers"),
    ("blank.jsonl", '{"text": "北京", "entities": []}\n\n{"text": "上海", "entities": []}\n', 2, "empty line"),
    ("mixed.jsonl", '{"text": "北京", "entities": []}\n北 B-LOC\n', 2, "one format"),
    ("mixed.conll", "北 B-LOC\n京 I-LOC\n{\"text\": \"x\"}\n", 3, "one format"),
    ("tag.conll", "北 B-LOC\n京 X-LOC\n", 2, "unknown tag"),
    ("inside.conll", "北 O\n京 I-LOC\n", 2, "B-LOC first"),
    ("after_blank.conll", "北 B-LOC\n\n京 I-LOC\n", 3, "B-LOC first"),
    ("columns.conll", "北 B-LOC\n京\n", 2, "2 columns"),
    ("pd.txt", "江/nr  泽民/nr\n在/p 北京\n", 2, "word/tag"),
]


@pytest.mark.parametrize("name,content,line,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_name_file_and_line(tmp_path, name, content, line, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInput) as err:
        read_examples(path)
    assert f"{path}:{line}:" in str(err.value)
    assert message in str(err.value)


def test_unknown_label_against_a_pinned_label_set(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text('{"text": "北京", "entities": [[0, 2, "CITY"]]}\n', encoding="utf-8")
    with pytest.raises(BadInput, match=re.escape(f"{path}:1:") + ".*unknown label 'CITY'"):
        read_jsonl(path, labels={"PER", "LOC", "ORG"})


@pytest.fixture(scope="session")
def pd_split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pd")
    convert_peoples_daily(peoples_daily_path(), out)
    return out


def test_peoples_daily_split_is_fixed_and_counts_match_the_raw_file(pd_split, tmp_path):
    summary = json.loads((pd_split / "split.json").read_text())
    raw = peoples_daily_path().read_text(encoding="utf-8")
    lines = [line for line in raw.splitlines() if line.strip()]
    assert summary["lines"] == len(lines) and summary["test"] >= 2000
    assert summary["train"] + summary["dev"] + summary["test"] == len(lines)
    # every ns / nt word is one entity; PER counts runs of nr words
    assert summary["entities"]["LOC"] == len(re.findall(r"\S/ns(?=\s|$)", raw))
    assert summary["entities"]["ORG"] == len(re.findall(r"\S/nt(?=\s|$)", raw))
    runs = sum(len(re.findall(r"(?:\S+/nr(?:\s+|$))+", line)) for line in lines)
    assert summary["entities"]["PER"] == runs
    parts = {name: [json.loads(x)["text"] for x in (pd_split / f"{name}.jsonl").read_text().splitlines()]
             for name in ("train", "dev", "test")}
    assert sum(map(len, parts.values())) == len(lines)
    # the same seed gives the same split again
    examples = [Example(t) for t in range(100)]
    assert split_examples(examples, 20, 10, seed=3) == split_examples(examples, 20, 10, seed=3)
    assert split_examples(examples, 20, 10, seed=3) != split_examples(examples, 20, 10, seed=4)


# ---------------------------------------------------------------- metrics

def test_entity_scores_are_seqeval_strict():
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O"]]
    got = entity_scores(gold, pred)
    assert got["f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
    # strict mode does not accept an entity that starts with I- (conlleval-style default mode does)
    assert got["f1"] < f1_score(gold, pred)
    assert got["per_type"]["LOC"]["f1"] == 1.0 and got["per_type"]["ORG"]["f1"] == 0.0
    assert got["precision"] == pytest.approx(1 / 2) and got["recall"] == pytest.approx(1 / 3)  # LOC of 2 / of 3


# ---------------------------------------------------------------- subword alignment

@pytest.fixture(scope="session")
def tiny_e5_shaped(tmp_path_factory) -> Path:
    """A random 1-layer XLM-R with multilingual-e5-small's real SentencePiece tokenizer."""
    import shutil

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from e5_model import e5_tokenizer_file

    folder = tmp_path_factory.mktemp("tiny_e5") / "model"
    folder.mkdir()
    torch.manual_seed(0)
    tags = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    model = XLMRobertaForTokenClassification(XLMRobertaConfig(
        vocab_size=250037, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=130, pad_token_id=1, num_labels=len(tags), id2label=dict(enumerate(tags)),
        label2id={t: i for i, t in enumerate(tags)}))
    model.save_pretrained(folder)
    shutil.copy(e5_tokenizer_file(), folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}))
    return folder


def test_sentencepiece_pieces_align_through_offsets(tiny_e5_shaped):
    from bertserve.tasks.ner.model import TokenTagger, alignment_loss
    from bertserve.tasks.ner.training import IGNORE, piece_features

    tagger = TokenTagger(tiny_e5_shaped, max_seq_len=32)
    # e5 cuts 在北京 as one piece: the place's first edge lies inside it, which first-piece labels cannot express
    loss = alignment_loss(tagger, [Example("国家主席江泽民在北京发表讲话", [(4, 7, "PER"), (8, 10, "LOC")])])
    assert loss["entities"] == 2 and loss["edge_inside_piece"] == 1
    text = "新华社记者王红报道：江泽民主席"
    ex = Example(text, [(0, 3, "ORG"), (5, 7, "PER"), (10, 13, "PER")])
    assert alignment_loss(tagger, [ex])["edge_inside_piece"] == 0
    ids, spans = tagger.pieces(text)
    assert any(s is not None and s[1] - s[0] > 1 for s in spans), "e5's pieces are not single characters"
    assert "".join(text[s:e] for s, e in filter(None, spans)) == text
    index = {t: i for i, t in enumerate(tagger.tag_names)}
    (w_ids, labels), = piece_features(tagger, [ex], index)
    gold = bio_tags(text, ex.entities)
    w = tagger.windows(text)[0]
    for span, label in zip(w.spans, labels):  # first-piece labelling
        assert label == (IGNORE if span is None else index[gold[span[0]]])
    # a piece's prediction spreads over its characters: B- on the first, I- on the rest
    logits = np.full((len(w.ids), len(tagger.tag_names)), -5.0, np.float32)
    for k, span in enumerate(w.spans):
        logits[k, index["O"] if span is None else index[gold[span[0]]]] = 5.0
    lo, char_logits = tagger.char_logits(w, logits)
    assert lo == 0 and [tagger.tag_names[i] for i in char_logits.argmax(1)] == gold


def test_gold_spans_survive_pieces_and_back_on_real_lines(tiny_e5_shaped, pd_split):
    """Gold spans -> first-piece labels -> a "perfect" model's logits -> decoded character spans, in short
    windows so lines are cut and merged: every entity comes back except those alignment_loss counts."""
    from bertserve.tasks.ner.engine import merge_windows
    from bertserve.tasks.ner.model import TokenTagger, alignment_loss
    from bertserve.tasks.ner.training import IGNORE, piece_features

    tagger = TokenTagger(tiny_e5_shaped, max_seq_len=24)
    index = {t: i for i, t in enumerate(tagger.tag_names)}
    lines = [ex for ex in read_jsonl(pd_split / "test.jsonl")[:150] if ex.entities]
    lost = total = labelled = 0
    for ex in lines:
        rows = []
        for w, (_, labels) in zip(tagger.windows(ex.text), piece_features(tagger, [ex], index)):
            logits = np.full((len(labels), len(tagger.tag_names)), -5.0, np.float32)
            logits[np.arange(len(labels)), [index["O"] if y == IGNORE else y for y in labels]] = 5.0
            labelled += sum(y not in (IGNORE, index["O"]) for y in labels)
            lo, char_logits = tagger.char_logits(w, logits)
            rows.append((lo, char_logits.argmax(1), char_logits.max(1)))
        tags, _ = merge_windows(len(ex.text), rows)
        decoded = set(spans_from_tags([tagger.tag_names[i] for i in tags]))
        lost += len(set(ex.entities) - decoded)
        total += len(ex.entities)
    assert labelled > total  # entity labels reach the pieces (not all masked or O)
    assert lost == alignment_loss(tagger, lines)["edge_inside_piece"] < 0.08 * total


def test_the_new_head_gets_its_own_learning_rate(tiny_e5_shaped):
    # at the body's rate the new head stays on "all O" for hundreds of steps (docs/ner.md, "teacher F1 0.0")
    from transformers import AutoModelForTokenClassification

    from bertserve.distill.training import make_optimizer
    from bertserve.tasks.ner.training import ner_train_config

    model = AutoModelForTokenClassification.from_pretrained(tiny_e5_shaped)
    head = {id(p) for p in model.classifier.parameters()}
    for head_lr, expected in ((None, 1e-4), (3e-3, 3e-3)):
        optimizer, _ = make_optimizer([model], ner_train_config(lr=1e-4, head_lr=head_lr), 10)
        rates = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
        assert {rates[i] for i in head} == {expected}
        assert {r for i, r in rates.items() if i not in head} == {1e-4}
        assert len(rates) == sum(1 for _ in model.parameters())


def test_long_texts_are_tagged_in_windows_and_merged(tiny_e5_shaped):
    from bertserve.tasks.ner.engine import NerEngine
    from bertserve.tasks.ner.model import TokenTagger, cut_windows

    assert cut_windows(list(range(10)), None, 4) == [(0, 4), (3, 7), (6, 10)]
    tagger = TokenTagger(tiny_e5_shaped, max_seq_len=16)
    engine = NerEngine(tagger)
    text = "北京大学的学生在上海参加比赛。" * 12
    prepared = engine.prepare([text, "  ", "李鹏"])
    assert len([it for it in prepared.items if it.text == 0]) > 3
    assert all(it.num_tokens <= 16 for it in prepared.items)
    rows = engine.run(prepared.items)
    results = engine.finish(prepared, rows)
    assert len(results) == 3 and results[1] == []
    # whole-text tags equal the per-window tags away from window edges
    tags = tagger.tag_texts([text])[0]
    spans = [(e["start"], e["end"], e["label"]) for e in results[0]]
    assert spans == spans_from_tags(tags)
    for e in results[0]:
        assert text[e["start"]:e["end"]] == e["text"] and 0.0 <= e["score"] <= 1.0
    with pytest.raises(BadInput):
        engine.prepare("not a list")
    with pytest.raises(BadInput):
        engine.prepare(["ok", 3])


# ---------------------------------------------------------------- training

@pytest.fixture(scope="session")
def tiny_ner_data(tmp_path_factory, pd_split) -> Path:
    """40 short real People's Daily training lines with entities (train = dev: the tiny models memorise)."""
    out = tmp_path_factory.mktemp("ner_data")
    lines = [ex for ex in read_jsonl(pd_split / "train.jsonl") if ex.entities and len(ex.text) < 50][:40]
    write_jsonl(lines, out / "train.jsonl")
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_chinese_bert, tiny_ner_data) -> tuple[Path, dict]:
    from bertserve.tasks.ner.training import finetune_ner, ner_train_config

    out = tmp_path_factory.mktemp("ner_teacher") / "teacher"
    data = tiny_ner_data / "train.jsonl"
    result = finetune_ner(tiny_chinese_bert, data, data, out, test=data, config=ner_train_config(
        epochs=10, lr=5e-3, batch_size=8, max_seq_len=64, progress=False, threads=1))
    return out, result


def test_tiny_teacher_learns_its_lines(tiny_teacher, tiny_ner_data):
    from bertserve.tasks.ner.evaluate import evaluate_tagger
    from bertserve.tasks.ner.model import load_tagger

    out, result = tiny_teacher
    assert result["labels"] == ["LOC", "ORG", "PER"]
    assert result["history"][0]["dev_f1"] < 0.3 < result["test"]["f1"]  # from nothing to memorised
    reloaded = evaluate_tagger(load_tagger(out), read_jsonl(tiny_ner_data / "train.jsonl"))
    assert reloaded["f1"] == pytest.approx(result["test"]["f1"])


def test_tiny_students_distill(tiny_teacher, tiny_ner_data, tmp_path):
    from bertserve.distill.losses import LossConfig
    from bertserve.tasks.ner.training import NerDistillConfig, distill_ner, ner_train_config

    data = str(tiny_ner_data / "train.jsonl")
    crf = distill_ner(NerDistillConfig(
        str(tiny_teacher[0]), "bilstm-crf:embedding=32,hidden=32", data, data, str(tmp_path / "crf"), test=data,
        unlabeled=data, training=ner_train_config(epochs=8, lr=3e-2, batch_size=8, max_seq_len=64, progress=False),
        loss=LossConfig(alpha=0.5, temperature=2.0), speed_rounds=1, speed_lines=5))
    models = crf["report"]["models"]
    assert models["student"]["kind"] == "bilstm-crf" and models["student"]["f1"] > 0.3
    assert models["student"]["params"] < models["teacher"]["params"]
    for name in ("report.md", "report.json", "training_curves.png", "chars.json", "model.safetensors"):
        assert (tmp_path / "crf" / name).is_file()
    assert "chars/s" in (tmp_path / "crf" / "report.md").read_text()
    bert = distill_ner(NerDistillConfig(
        str(tiny_teacher[0]), "bert:layers=1", data, data, str(tmp_path / "bert1"),
        training=ner_train_config(epochs=1, lr=1e-3, batch_size=8, max_seq_len=64, progress=False), speed_rounds=0))
    student = bert["report"]["models"]["student"]
    assert student["kind"] == "token-classification"
    assert json.loads((tmp_path / "bert1" / "config.json").read_text())["num_hidden_layers"] == 1


def test_unknown_student_is_refused(tiny_teacher, tiny_ner_data, tmp_path):
    from bertserve.tasks.ner.training import NerDistillConfig, distill_ner

    data = str(tiny_ner_data / "train.jsonl")
    with pytest.raises(BadInput, match="bilstm-crf"):
        distill_ner(NerDistillConfig(str(tiny_teacher[0]), "textcnn", data, data, str(tmp_path / "x")))


# ---------------------------------------------------------------- CLI

def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "bertserve.cli", *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, timeout=300)


def test_cli_ner_and_convert(tiny_teacher, tmp_path, capsys):
    from bertserve.cli import main

    text = "新华社北京十二月三十一日电"
    r = _cli("ner", "--model", str(tiny_teacher[0]), text, "李鹏")  # a real process: JSON lines on stdout
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == [text, "李鹏"]
    for row in rows:
        for ent in row["entities"]:
            assert row["text"][ent["start"]:ent["end"]] == ent["text"]
    src = tmp_path / "pd.txt"
    src.write_text("\n".join(f"李/nr  鹏/nr  到/v  北京/ns  {i}/m" for i in range(30)) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["ner-convert", "--peoples-daily", str(src), "--out", str(tmp_path / "split"), "--test-lines", "5",
                 "--dev-lines", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == 5
    assert len((tmp_path / "split" / "train.jsonl").read_text().splitlines()) == 20
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "北京", "entities": [[0, 9, "LOC"]]}\n', encoding="utf-8")
    code = main(["finetune", "--task", "ner", "--model", str(tiny_teacher[0]), "--train", str(bad), "--dev", str(bad),
                 "--out", str(tmp_path / "never")])
    assert code == 2 and f"{bad}:1:" in capsys.readouterr().err


# ---------------------------------------------------------------- server

def test_ner_over_a_real_server(tiny_teacher, tiny_ner_data):
    import httpx

    from bertserve.client import BadRequest, Client
    from bertserve.serve.process import ServerProcess
    from bertserve.tasks.ner.engine import NerEngine
    from bertserve.tasks.ner.model import load_tagger

    lines = [ex.text for ex in read_jsonl(tiny_ner_data / "train.jsonl")[:6]]
    # an astral character (one code point, two UTF-16 units) and spaces before the entities: offsets are
    # Python string indices into the text as sent; a long text crosses several windows
    texts = ["😀 " + lines[0], lines[1] + "  " + lines[2], "".join(lines) * 3, "", lines[3]]
    local = NerEngine(load_tagger(tiny_teacher[0]))(texts)
    assert any(local), "the tiny teacher finds entities in the lines it learnt"
    srv = ServerProcess("--ner", str(tiny_teacher[0]), "--max-request-texts", "50")
    try:
        with Client(srv.url) as client:
            got = client.ner(texts)
            assert len(got) == len(texts)
            for text, ents, ref in zip(texts, got, local):
                assert [(e["start"], e["end"], e["label"]) for e in ents] == [(e["start"], e["end"], e["label"]) for e in ref]
                for e, r in zip(ents, ref):
                    assert text[e["start"]:e["end"]] == e["text"] and e["score"] == pytest.approx(r["score"], abs=1e-3)
            with pytest.raises(BadRequest):
                client.ner([1, 2])
            status = client.status()
        assert "ner" in json.dumps(status)
        for body, code in (({"texts": "北京"}, 400), ({"texts": [None]}, 400), ({"texts": []}, 400),
                           ({"texts": ["北京"] * 51}, 413)):
            r = httpx.post(srv.url + "/ner", json=body, timeout=60)
            assert r.status_code == code, (body, r.text)
            assert set(r.json()["error"]) >= {"message", "type", "code"}
    finally:
        assert srv.stop() == 0, srv.log_text()[-2000:]
