"""Sentence splitting, extractive summaries and keywords (bertserve.tasks.summarize), in-process and over HTTP.

References: sentence-transformers for the vectors behind the centroid scores, networkx's PageRank for the
TextRank/LexRank scores, KeyBERT (on the same model) for the keyword ranking, jieba for Chinese words, the
model's own tokenizer for the window cut."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertserve.errors import BadInput, BadInputType, TooLarge
from bertserve.tasks.summarize import keywords, split_sentences, summarize
from bertserve.tasks.summarize.document import MAX_SENTENCES, Document
from bertserve.tasks.summarize.summarize import centrality

pytestmark = pytest.mark.timeout(240)


def lee_documents() -> list[str]:
    root = Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
    text = (root / "test" / "test_data" / "lee_background.cor").read_text(encoding="latin-1")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def article() -> str:
    return next(d for d in lee_documents() if 12 <= len(split_sentences(d)) <= 20)


ZH_ARTICLE = ("新华社北京1月1日电。国家主席江泽民发表新年讲话，祝愿全国各族人民新年快乐！"
              "讲话指出，1997年中国经济保持了“高增长、低通胀”的良好态势。香港回归祖国，实行“一国两制”。"
              "中国共产党召开了第十五次全国代表大会？大会制定了跨世纪发展的行动纲领；全国人民深受鼓舞。")


# ---- sentence splitting: hand-written tricky cases --------------------------------------------------------

SPLITS = [
    # Chinese stops, and closing quotes that belong to the sentence they close
    ("他说：“今天天气很好。”然后走了。我们呢？不知道！", ["他说：“今天天气很好。”", "然后走了。", "我们呢？", "不知道！"]),
    ("第一条；第二条；第三条", ["第一条；", "第二条；", "第三条"]),
    ("真的吗？！是的……好吧。", ["真的吗？！", "是的……", "好吧。"]),
    ("他问（真的？）不会吧。", ["他问（真的？）", "不会吧。"]),
    # ASCII stops typed in Chinese text
    ("今天很好!明天呢?不知道;再说.", ["今天很好!", "明天呢?", "不知道;", "再说."]),
    # numbers, acronyms and abbreviations do not end a sentence
    ("价格上涨了3.5%。美国（U.S.）经济增长。", ["价格上涨了3.5%。", "美国（U.S.）经济增长。"]),
    ("GDP grew 3.5% in the U.S. last year. Mr. Smith disagreed.", ["GDP grew 3.5% in the U.S. last year.",
                                                                "Mr. Smith disagreed."]),
    ("Talks were held in the U.S. The result was a deal.", ["Talks were held in the U.S.", "The result was a deal."]),
    ("See e.g. Fig. 3 for details. John F. Kennedy spoke. Visit example.com today.",
     ["See e.g. Fig. 3 for details.", "John F. Kennedy spoke.", "Visit example.com today."]),
    ("Dr. Who arrived at 10 a.m. and left. Version 2.0.1 shipped.",
     ["Dr. Who arrived at 10 a.m. and left.", "Version 2.0.1 shipped."]),
    # quotes and brackets after an English stop; ! ? and ellipses
    ('He said "Stop." Then he left. (It was late.) Why? Because!', ['He said "Stop."', "Then he left.",
                                                                  "(It was late.)", "Why?", "Because!"]),
    ("Wait... what? Really?! yes, really.", ["Wait... what?", "Really?! yes, really."]),
    # mixed Chinese and English
    ("苹果发布了iPhone 15。The price is $799. 售价为5999元。", ["苹果发布了iPhone 15。", "The price is $799.",
                                                              "售价为5999元。"]),
    # line breaks: a blank line always ends a sentence, one line break only after Chinese text
    ("第一行没有标点\n第二行也没有\n\nHeading\n\nA wrapped\nline. Next one.",
     ["第一行没有标点", "第二行也没有", "Heading", "A wrapped\nline.", "Next one."]),
    ("  \n Only one sentence without a stop  ", ["Only one sentence without a stop"]),
    ("Hello!!! ...", ["Hello!!! ..."]),
]


@pytest.mark.parametrize("text,expected", SPLITS)
def test_sentence_splitting_tricky_cases(text, expected):
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == expected
    for s in sentences:
        assert text[s.start:s.end] == s.text
    assert all(a.end <= b.start for a, b in zip(sentences, sentences[1:]))


def test_splitting_loses_no_text_on_real_articles(article):
    for text in [article, ZH_ARTICLE, article + "\n\n" + ZH_ARTICLE]:
        sentences = split_sentences(text)
        joined = "".join(text[s.start:s.end] for s in sentences)
        assert re.sub(r"\s", "", joined) == re.sub(r"\s", "", text)
    assert split_sentences("") == [] and split_sentences(" \n ") == []


# ---- summaries with the bundled model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    from bertserve.models import default_model_path
    return SentenceTransformer(str(default_model_path()), device="cpu")


def test_summary_options_order_and_offsets(default_encoder, article):
    n = len(split_sentences(article))
    for method, options, expect in (("centroid", {"num_sentences": 3}, 3), ("textrank", {"ratio": 0.5}, -(-n // 2)),
                                    ("lexrank", {}, -(-n // 5))):
        s = summarize(default_encoder, article, method=method, **options)
        assert len(s.sentences) == expect and s.num_sentences == n and s.method == method
        assert [x.index for x in s.sentences] == sorted(x.index for x in s.sentences)  # document order
        for x in s.sentences:
            assert article[x.start:x.end] == x.text
        assert s.text == " ".join(x.text for x in s.sentences)
    capped = summarize(default_encoder, article, ratio=1.0, max_chars=300)
    assert 0 < len(capped.text) <= 300 + len(capped.sentences)
    assert sum(len(x.text) for x in capped.sentences) <= 300


def test_centroid_scores_match_sentence_transformers(default_encoder, st_model, article):
    s = summarize(default_encoder, article, method="centroid", num_sentences=4, diversity=0.0, position=0.0)
    sentences = [x.text for x in split_sentences(article)]
    vectors = st_model.encode(sentences, normalize_embeddings=True)
    weights = np.array([len(t) for t in sentences], dtype=np.float64)[:, None]
    centre = (vectors * weights).sum(0)
    centre /= np.linalg.norm(centre)
    expected = vectors @ centre
    for x in s.sentences:
        assert x.score == pytest.approx(float(expected[x.index]), abs=1e-4)
    # with no redundancy penalty the summary is simply the top 4 by score
    assert {x.index for x in s.sentences} == set(np.argsort(-expected)[:4].tolist())


def test_position_prior_and_blend(default_encoder, article):
    # a heavy prior for the opening sentences turns any method into lead-k
    for method in ("centroid", "blend"):
        s = summarize(default_encoder, article, method=method, num_sentences=3, diversity=0.0, position=10.0)
        assert [x.index for x in s.sentences] == [0, 1, 2]
    doc = Document.split(article)
    vectors = doc.sentence_vectors(default_encoder.encode(doc.pieces))
    centroid, textrank = centrality(vectors, "centroid", doc.vector(vectors)), centrality(vectors, "textrank")
    z = [(x - x.mean()) / x.std() for x in (centroid, textrank)]
    assert np.allclose(centrality(vectors, "blend", doc.vector(vectors)), z[0] + 0.5 * z[1], atol=1e-5)
    with pytest.raises(BadInput, match="position"):
        summarize(default_encoder, article, position=-1)


def test_textrank_and_lexrank_match_networkx_pagerank(default_encoder, article):
    import networkx as nx

    doc = Document.split(article)
    vectors = doc.sentence_vectors(default_encoder.encode(doc.pieces))
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, 0)
    n = len(sim)
    weighted = nx.from_numpy_array(np.clip(sim, 0, None))
    expected = nx.pagerank(weighted, alpha=0.85, weight="weight", tol=1e-12, max_iter=1000)
    assert np.allclose(centrality(vectors, "textrank"), [expected[i] for i in range(n)], atol=1e-6)
    threshold = sim.sum() / (n * (n - 1))
    binary = nx.from_numpy_array((sim > threshold).astype(float))
    expected = nx.pagerank(binary, alpha=0.85, tol=1e-12, max_iter=1000)
    assert np.allclose(centrality(vectors, "lexrank"), [expected[i] for i in range(n)], atol=1e-6)


def test_mmr_keeps_a_repeated_sentence_out_of_the_summary(default_encoder, article):
    sentences = split_sentences(article)
    plain = summarize(default_encoder, article, num_sentences=2, diversity=0.0)
    best = plain.sentences[0].text
    doubled = article + " " + best  # the best sentence twice: only the penalty tells the copies apart
    without = summarize(default_encoder, doubled, num_sentences=2, diversity=0.0)
    assert [x.text for x in without.sentences].count(best) == 2
    with_penalty = summarize(default_encoder, doubled, num_sentences=2, diversity=0.5)
    assert [x.text for x in with_penalty.sentences].count(best) == 1
    assert len(sentences) + 1 == with_penalty.num_sentences


def test_long_document_is_embedded_whole_with_long_sentences_cut_to_the_window(default_encoder, article):
    window = default_encoder.max_seq_len
    long_sentence = " ".join(article.split()[:200] * 3).replace(".", ",") + "."
    text = " ".join(lee_documents()[:3]) + " " + long_sentence
    doc = Document.split(text, window)
    assert len(text.split()) > 4 * window  # far past one window: nothing may be cut off
    last = len(doc.sentences) - 1
    pieces = [p for p, owner in zip(doc.pieces, doc.piece_owner) if owner == last]
    assert len(pieces) > 1
    for piece in pieces:  # the model's own tokenizer: every piece fits the window, so none is truncated
        assert len(default_encoder.checkpoint.tokenizer(piece)["input_ids"]) <= window
    assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", long_sentence)
    s = summarize(default_encoder, text, num_sentences=5)
    assert len(s.sentences) == 5 and s.num_sentences == len(doc.sentences)


def test_bad_input_is_refused_with_bertserve_errors(default_encoder, article):
    for text, cls, match in (("", BadInput, "empty"), ("   ", BadInput, "empty"), (5, BadInputType, "string"),
                             ("One sentence and no boundary", BadInput, "no sentence boundary")):
        with pytest.raises(cls, match=match):
            summarize(default_encoder, text)
    for options, match in (({"method": "magic"}, "method"), ({"ratio": 0}, "ratio"), ({"ratio": 0.5, "num_sentences": 2}, "not both"),
                           ({"num_sentences": 0}, "num_sentences"), ({"max_chars": -1}, "max_chars"),
                           ({"diversity": 2}, "diversity"), ({"colour": "red"}, "unknown")):
        with pytest.raises(BadInput, match=match):
            summarize(default_encoder, article, **options)
    with pytest.raises(TooLarge, match="more than 4000"):
        summarize(default_encoder, "Yes. " * (MAX_SENTENCES + 1))
    for options, match in (({"top_n": 0}, "top_n"), ({"diversity": -1}, "diversity"), ({"max_ngram": 9}, "max_ngram")):
        with pytest.raises(BadInput, match=match):
            keywords(default_encoder, article, **options)
    with pytest.raises(BadInput, match="no candidate"):
        keywords(default_encoder, "It is what it is. 1 2 3.")


# ---- keywords ----------------------------------------------------------------------------------------------

def test_keywords_rank_like_keybert_on_a_one_sentence_text(default_encoder, st_model):
    from keybert import KeyBERT
    from sklearn.feature_extraction.text import CountVectorizer

    # one sentence: the document vector is that sentence's vector, exactly what KeyBERT embeds
    text = ("Firefighters battled bushfires across the mountains while thunderstorms and strong winds "
            "threatened homes and forced residents to evacuate towns near the coast")
    kb = KeyBERT(model=st_model)
    vectorizer = CountVectorizer(ngram_range=(1, 1), stop_words="english")
    for diversity, use_mmr in ((0.0, False), (0.5, True)):
        theirs = kb.extract_keywords(text, vectorizer=vectorizer, top_n=6, use_mmr=use_mmr, diversity=diversity)
        ours = keywords(default_encoder, text, top_n=6, max_ngram=1, diversity=diversity)
        assert [k.text for k in ours] == [w for w, _ in theirs]
        assert [k.score for k in ours] == pytest.approx([s for _, s in theirs], abs=2e-3)  # KeyBERT rounds to 4


def test_english_keywords_are_stop_word_free_phrases_of_the_text(default_encoder, article):
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    found = keywords(default_encoder, article, top_n=8, max_ngram=2, diversity=0.3)
    assert len(found) == 8 and len({k.text for k in found}) == 8
    lowered = article.lower()
    for k in found:
        words = k.text.split()
        assert 1 <= len(words) <= 2 and not set(words) & ENGLISH_STOP_WORDS
        assert k.count == len(re.findall(rf"(?<!\w){re.escape(k.text)}(?!\w)", lowered)) >= 1
    plain = keywords(default_encoder, article, top_n=8, diversity=0.0)
    assert [k.score for k in plain] == sorted((k.score for k in plain), reverse=True)


def test_chinese_summary_and_keywords_with_a_chinese_vocabulary(tiny_chinese_bert):
    import jieba
    import jieba.posseg

    from bertserve import Encoder

    encoder = Encoder(str(tiny_chinese_bert), backend="torch")
    s = summarize(encoder, ZH_ARTICLE, num_sentences=2)
    assert s.num_sentences == 7 and len(s.sentences) == 2
    assert s.text == "".join(x.text for x in s.sentences)  # no spaces between Chinese sentences
    for x in s.sentences:
        assert ZH_ARTICLE[x.start:x.end] == x.text
    found = keywords(encoder, ZH_ARTICLE, top_n=5)
    words = {p.word: p.flag for p in jieba.posseg.cut(ZH_ARTICLE)}
    assert len(found) == 5
    for k in found:
        assert k.text in words and len(k.text) >= 2 and words[k.text][0] in "nvlijea"
        assert k.count == ZH_ARTICLE.count(k.text)


# ---- HTTP, client and CLI -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(default_encoder):
    from bertserve.serve.config import ServerConfig
    from bertserve.serve.server import Server

    config = ServerConfig(http_port=0, zmq=False, max_payload_bytes=200_000, max_request_texts=50,
                          shutdown_timeout=5)
    srv = Server(config, encoder=default_encoder).start()
    yield srv
    assert srv.shutdown()


def test_http_and_client_match_in_process(server, default_encoder, article):
    from bertserve.client import Client

    with Client(f"http://127.0.0.1:{server.http_port}") as client:
        local = summarize(default_encoder, article, num_sentences=3, method="textrank").to_dict()
        remote = client.summarize(article, num_sentences=3, method="textrank")
        assert remote["model"] == server.state.model_name
        assert [x["index"] for x in remote["sentences"]] == [x["index"] for x in local["sentences"]]
        assert remote["summary"] == local["summary"]
        assert [x["score"] for x in remote["sentences"]] == pytest.approx([x["score"] for x in local["sentences"]],
                                                                            abs=1e-5)
        # more sentences than the server takes texts per request: one document is one request to its engine
        long_text = " ".join(lee_documents()[:8])
        assert len(split_sentences(long_text)) > 50
        assert client.summarize(long_text, ratio=0.1)["num_sentences"] == len(split_sentences(long_text))
        local_kw = [k.to_dict() for k in keywords(default_encoder, article, top_n=5)]
        remote_kw = client.keywords(article, top_n=5)
        assert [k["text"] for k in remote_kw] == [k["text"] for k in local_kw]


def test_summarize_and_keywords_are_engines_in_status_and_metrics(server, article):
    import httpx

    base = f"http://127.0.0.1:{server.http_port}"
    assert httpx.post(f"{base}/summarize", json={"text": article, "num_sentences": 2}, timeout=60).status_code == 200
    assert httpx.post(f"{base}/keywords", json={"text": article, "top_n": 3}, timeout=60).status_code == 200
    engines = httpx.get(f"{base}/status", timeout=30).json()["engines"]
    for kind in ("summarize", "keywords"):
        assert engines[kind]["kind"] == kind and engines[kind]["name"] == server.state.model_name
        assert engines[kind]["statistic"]["requests"] >= 1, engines[kind]
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    for kind in ("summarize", "keywords"):
        assert re.search(rf'bertserve_engine_requests_total{{[^}}]*engine="{kind}"[^}}]*}} [1-9]', metrics), kind


@pytest.mark.parametrize("path,body,status,match", [
    ("/summarize", {"text": ""}, 400, "empty"),
    ("/summarize", {"text": "   "}, 400, "empty"),
    ("/summarize", {"text": "Just one sentence here"}, 400, "no sentence boundary"),
    ("/summarize", {"text": 5}, 400, "text"),
    ("/summarize", {}, 400, "text: Field required"),
    ("/summarize", {"text": "A b. C d.", "method": "magic"}, 400, "method"),
    ("/summarize", {"text": "A b. C d.", "ratio": 2}, 400, "ratio"),
    ("/summarize", {"text": "A b. C d.", "num_sentences": "many"}, 400, "num_sentences"),
    ("/summarize", {"text": "Big text. " * 30_000}, 413, "over the server's limit"),
    ("/keywords", {"text": ""}, 400, "empty"),
    ("/keywords", {"text": "It is. 1 2 3."}, 400, "no candidate"),
    ("/keywords", {"text": "Solar power.", "top_n": 0}, 400, "top_n"),
    ("/keywords", {"text": "Big text. " * 30_000}, 413, "over the server's limit"),
])
def test_bad_http_input_gets_a_clear_4xx(server, path, body, status, match):
    import httpx

    r = httpx.post(f"http://127.0.0.1:{server.http_port}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and re.search(match, err["message"]), err


def test_cli_summarize_and_keywords(tmp_path, server, article, capsys, monkeypatch):
    import io

    from bertserve.cli import main

    path = tmp_path / "article.txt"
    path.write_text(article, encoding="utf-8")
    url = f"http://127.0.0.1:{server.http_port}"
    run = [sys.executable, "-m", "bertserve.cli"]
    out = subprocess.run(run + ["summarize", str(path), "-n", "2", "--json", "--server", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert len(answer["sentences"]) == 2 and all(article[x["start"]:x["end"]] == x["text"] for x in answer["sentences"])
    out = subprocess.run(run + ["summarize", "-", "--server", url], input="no boundary here",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no sentence boundary" in out.stderr
    # in-process (an Encoder built from the flags), text on stdin
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(article))
    assert main(["keywords", "-", "-n", "3", "--backend", "torch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(re.match(r"-?\d\.\d{4}\t\S", line) for line in lines)
    assert main(["summarize", str(path), "-n", "2", "--backend", "torch"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [x["text"] for x in answer["sentences"]]
