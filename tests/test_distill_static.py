"""Static-embedding students: distilled from a tiny BERT the test builds (and from the real default model with a
small vocabulary), checked against the format's own readers (model2vec's StaticModel, sentence-transformers'
StaticEmbedding), the teacher's own token vectors, the Encoder surface, the CLI, a server and a collection."""
from __future__ import annotations

import collections
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import save_tiny_bert
from serve_corpus import lee_sentences

from bertserve import Encoder
from bertserve.distill.static import StaticDistillConfig, StaticDistiller, save_static
from bertserve.encode import EncoderConfig
from bertserve.encode.static import StaticEncoder
from bertserve.errors import BadInput
from bertserve.models import CheckpointError, load_checkpoint

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [s for s in lee_sentences() if len(s.split()) <= 40][:700]


@pytest.fixture(scope="module")
def english_vocab(tmp_path_factory, sentences) -> Path:
    """A real WordPiece vocab.txt: the 1,500 commonest lower-cased words of the Lee corpus, letters and '##' letters."""
    words = collections.Counter(w for s in sentences for w in re.findall(r"[a-z]+|[^\sa-z0-9]", s.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = SPECIALS + [f"[unused{i}]" for i in range(3)] + letters + [f"##{c}" for c in letters]
    vocab += [w for w, _ in words.most_common(1500) if w not in vocab]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, english_vocab):
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny_en") / "model", english_vocab, hidden=32)
    return Encoder(folder, normalize=False, max_seq_len=64)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, sentences):
    path = tmp_path_factory.mktemp("corpus") / "lee.txt"
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_teacher, corpus_file):
    """A student of the tiny teacher with the corpus stage: (distiller, folder)."""
    out = tmp_path_factory.mktemp("static") / "student"
    config = StaticDistillConfig(out=str(out), teacher=str(tiny_teacher.checkpoint.path), dims=16,
                                 corpus=(str(corpus_file),), heldout=100, fit_epochs=3, fit_lr=1e-2,
                                 cache_dir=str(out.parent / "cache"))
    distiller = StaticDistiller(config, teacher_encoder=tiny_teacher)
    distiller.run(log=lambda s: None)
    return distiller, distiller.save()


TEXTS = ["The minister said the talks would resume on Monday.", "a b c", "Zyzzyva quixotically vexed", "",
         "Police say the fire was deliberately lit, and three people were arrested."]


def test_folder_loads_with_equal_vectors_in_model2vec_sentence_transformers_and_encoder(fitted):
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    _, folder = fitted
    ours = Encoder(folder)
    assert isinstance(ours, StaticEncoder) and ours.dim == 16 and ours.config.normalize is False
    theirs = StaticModel.from_pretrained(folder)
    np.testing.assert_allclose(ours.encode(TEXTS), theirs.encode(TEXTS), atol=1e-6)
    # past max_length both truncate the same way (unknown words inside the kept part included)
    short = Encoder(folder, max_seq_len=8)
    texts = [" ".join(TEXTS * 3), "zyzzyva " * 3 + TEXTS[0]]
    np.testing.assert_allclose(short.encode(texts), theirs.encode(texts, max_length=8), atol=1e-6)
    # the engine path (tokenize, then embed: what the batcher calls) gives the fast path's vectors
    np.testing.assert_allclose(ours.embed(ours.tokenize(TEXTS)), ours.encode(TEXTS), atol=1e-7)
    assert not ours.encode([""]).any()  # an empty text is a zero vector in both
    st = SentenceTransformer(str(folder), device="cpu")
    assert isinstance(st[0], StaticEmbedding)
    # StaticEmbedding keeps the unknown token that model2vec (and we) drop: compare on text the vocab covers
    covered = [t for t in TEXTS if t and "[UNK]" not in ours.tokenizer.backend.encode(t).tokens]
    assert len(covered) >= 2
    np.testing.assert_allclose(ours.encode(covered), st.encode(covered), atol=1e-5)


def test_normalized_teacher_gives_a_normalizing_folder_for_all_three_readers(tmp_path, fitted, tiny_teacher):
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    distiller, _ = fitted
    tok = distiller.tokenizer
    out = save_static(distiller.table, tok, tmp_path / "norm", normalize=True, base_model="tiny")
    ours = Encoder(out).encode(TEXTS[:2])
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ours, StaticModel.from_pretrained(out).encode(TEXTS[:2]), atol=1e-6)
    np.testing.assert_allclose(ours, SentenceTransformer(str(out), device="cpu").encode(TEXTS[:2]), atol=1e-5)


def test_table_rows_are_the_teachers_own_token_vectors(tmp_path, tiny_teacher):
    """No corpus, full width, no weighting: PCA only centres and rotates, so distances between rows are the
    distances between the teacher's vectors of [CLS] token [SEP] computed one token at a time."""
    config = StaticDistillConfig(out=str(tmp_path / "s"), dims=None, sif_coefficient=None)
    distiller = StaticDistiller(config, teacher_encoder=tiny_teacher)
    table = distiller.run(log=lambda s: None)
    vocab = distiller.tokenizer.get_vocab()
    words = ["minister", "police", "the", "##e", "fire"]
    ref = np.stack([tiny_teacher.encode([[w]], is_tokenized=True)[0] for w in words])
    rows = table[[vocab[w] for w in words]]
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    d_rows = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
    np.testing.assert_allclose(d_rows, d_ref, rtol=1e-3, atol=1e-4)
    for special in SPECIALS + ["[unused0]"]:  # never produced by text: kept at zero, out of the PCA
        assert not table[vocab[special]].any()


def test_zipf_weights_follow_rank_and_corpus_weights_follow_counts():
    from bertserve.distill.static import corpus_weights, zipf_weights

    w = zipf_weights(np.ones(100, dtype=bool), 1e-3)
    assert np.all(np.diff(w) > 0) and w[-1] < 1  # rarer (later) tokens weigh more
    keep = np.arange(110) >= 10  # ten placeholders in front: ranks start at the first real token
    np.testing.assert_allclose(zipf_weights(keep, 1e-3)[keep], w)
    c = corpus_weights([[1, 1, 1, 2]], 4, 1e-1)
    assert c[1] < c[2] < c[0] == c[3]  # seen three times < once < never


def test_new_vocabulary_goes_through_the_teacher_as_text(tmp_path, tiny_chinese_bert, chinese_vocab):
    """bert-base-chinese's character vocabulary as a new vocabulary: '好' and its continuation '##好' are the
    same text for the teacher, so their rows match; rows are the teacher's vectors of the character text."""
    teacher = Encoder(tiny_chinese_bert, normalize=False)
    config = StaticDistillConfig(out=str(tmp_path / "zh"), vocab=str(chinese_vocab), dims=None, sif_coefficient=None)
    distiller = StaticDistiller(config, teacher_encoder=teacher)
    table = distiller.run(log=lambda s: None)
    assert not distiller.own_vocab and len(table) == 21128
    vocab = distiller.tokenizer.get_vocab()
    np.testing.assert_allclose(table[vocab["好"]], table[vocab["##好"]], atol=1e-6)
    chars = ["好", "坏", "人", "民"]
    ref = teacher.encode(chars)
    rows = table[[vocab[c] for c in chars]]
    np.testing.assert_allclose(np.linalg.norm(rows[0] - rows[1:], axis=1), np.linalg.norm(ref[0] - ref[1:], axis=1),
                               rtol=1e-3)
    folder = distiller.save()
    enc = Encoder(folder)
    vectors, tokens = enc.encode(["这个酒店很好"], show_tokens=True)
    assert tokens == [list("这个酒店很好")]
    np.testing.assert_allclose(vectors[0], table[[vocab[c] for c in "这个酒店很好"]].mean(0), rtol=1e-5)


def test_fitting_stage_raises_heldout_agreement_and_keeps_the_best_epoch(fitted):
    distiller, _ = fitted
    h = distiller.history
    assert len(h.heldout_cosine) == 4 and h.epochs[0] == 0.0
    assert max(h.heldout_cosine) > h.heldout_cosine[0] + 0.01
    assert h.best_epoch == h.epochs[int(np.argmax(h.heldout_cosine))]


def test_anchor_keeps_fitted_rows_near_the_stage_one_table(tmp_path, tiny_teacher, corpus_file):
    """The fit moves a residual that AdamW decays toward the stage-one table: a strong anchor keeps the rows
    nearer to it than free rows, and both still raise the held-out cosine."""
    def table(**kw):
        config = StaticDistillConfig(out=str(tmp_path / "a"), teacher=str(tiny_teacher.checkpoint.path), dims=16,
                                     corpus=(str(corpus_file),), heldout=100, fit_lr=1e-2, seed=1,
                                     cache_dir=str(tmp_path / "cache"), **kw)
        distiller = StaticDistiller(config, teacher_encoder=tiny_teacher)
        return distiller.run(log=lambda s: None), distiller.history

    start, _ = table(fit_epochs=0)
    start = start / np.linalg.norm(start[start.any(axis=1)], axis=1).mean()  # the fit's unit mean row length
    moved = {}
    for anchor in (0.0, 50.0):
        fitted, history = table(fit_epochs=2, fit_anchor=anchor)
        assert max(history.heldout_cosine) > history.heldout_cosine[0]
        moved[anchor] = np.linalg.norm(fitted - start)
    assert moved[50.0] < 0.8 * moved[0.0]
    with pytest.raises(BadInput):
        StaticDistillConfig(out="x", fit_anchor=-1)
    with pytest.raises(BadInput):
        StaticDistillConfig(out="x", projection="sentences")  # needs a corpus


def test_real_default_teacher_with_a_small_vocabulary(tmp_path, english_vocab, corpus_file, sentences):
    """all-MiniLM-L6-v2 as the teacher over a 1,500-word vocabulary: the student ranks held-out sentences'
    neighbours much like the teacher does, far above a random table of the same shape."""
    from bertserve.distill.embed_report import neighbour_agreement

    teacher = Encoder(None, normalize=False, max_seq_len=64)
    config = StaticDistillConfig(out=str(tmp_path / "mini"), vocab=str(english_vocab), dims=64,
                                 corpus=(str(corpus_file),), max_texts=450, heldout=90, fit_epochs=4, fit_lr=1e-2,
                                 cache_dir=str(tmp_path / "cache"))
    distiller = StaticDistiller(config, teacher_encoder=teacher)
    distiller.run(log=lambda s: None)
    student = Encoder(distiller.save())
    held = distiller.heldout
    ours = neighbour_agreement(distiller.heldout_targets, student.encode(held))
    rng = np.random.default_rng(0)
    chance = neighbour_agreement(distiller.heldout_targets, rng.normal(size=(len(held), 64)))
    assert ours["pairwise_cosine_spearman"] > 0.3 > chance["pairwise_cosine_spearman"] + 0.2
    assert ours["top10_overlap"] > 2 * chance["top10_overlap"]


def test_encoder_surface_config_round_trip_and_refusals(fitted):
    _, folder = fitted
    enc = Encoder(folder)
    info = enc.info()
    assert info["backend"] == "static" and info["dim"] == 16 and info["layers"] == 0
    again = Encoder(config=EncoderConfig.from_dict(enc.config.to_dict()))  # how a collection reopens its encoder
    assert isinstance(again, StaticEncoder)
    np.testing.assert_array_equal(again.encode(TEXTS), enc.encode(TEXTS))
    items = enc.tokenize(TEXTS)
    np.testing.assert_array_equal(enc.embed(items), enc.encode(TEXTS))
    assert [it.num_tokens for it in items][3] == 0
    assert Encoder(folder, max_seq_len=3).tokenize([TEXTS[0]])[0].num_tokens == 3
    np.testing.assert_allclose(enc.encode([["the", "minister"]], is_tokenized=True), enc.encode(["the minister"]))
    for bad in ({"pooling": "CLS_TOKEN"}, {"layers": (1,)}, {"long_text": "chunk"}, {"max_seq_len": 0}):
        with pytest.raises(BadInput):
            Encoder(folder, **bad)
    with pytest.raises(TypeError):
        enc.encode([3])
    with pytest.raises(CheckpointError, match="static"):
        load_checkpoint(folder)


def test_cli_distills_writes_a_report_and_the_folder_serves_and_indexes(tmp_path, tiny_teacher, corpus_file):
    from bertserve.cli import main
    from bertserve.search.collection import Collection
    from bertserve.serve.process import ServerProcess

    out = tmp_path / "cli"
    code = main(["distill", "--objective", "static", "--teacher", str(tiny_teacher.checkpoint.path), "--out", str(out),
                 "--corpus", str(corpus_file), "--dims", "8", "--fit-epochs", "1", "--heldout", "50",
                 "--report-rounds", "1", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    report = (out / "report" / "report.md").read_text()
    assert "Spearman lee50" in report and "texts/s" in report
    assert (out / "report" / "fit_curve.png").is_file() and (out / "distill_info.json").is_file()
    assert main(["distill", "--objective", "static", "--teacher", str(tiny_teacher.checkpoint.path)]) == 2  # no --out

    enc = Encoder(out)
    texts = TEXTS[:2] + TEXTS[4:]
    coll = Collection.create(tmp_path / "coll", encoder=enc)
    coll.add(texts=texts, ids=["a", "b", "c"])
    assert coll.search(texts[2], k=1)[0].id == "c"
    coll.close()
    reopened = Collection.open(tmp_path / "coll")  # rebuilds the static encoder from the saved config
    assert reopened.search(texts[0], k=1)[0].id == "a"
    reopened.close()

    srv = ServerProcess("--model", str(out))
    try:
        r = httpx.post(f"{srv.url}/encode", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["result"]), enc.encode(texts), atol=1e-6)
        bad = httpx.post(f"{srv.url}/encode", json={"texts": [1, 2]}, timeout=30)
        assert bad.status_code == 400 and "error" in bad.json()
    finally:
        srv.stop()
