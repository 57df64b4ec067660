"""Encoder against references computed here from plain transformers outputs, and against sentence-transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertserve.models import default_model_path
from conftest import exact_encoder as Encoder  # values are checked at 1e-4: the torch reference backend

TEXTS = [
    "First do it",
    "then do it right, then do it better",
    "",
    "我爱北京天安门",
    "BERT 模型 turns text into vectors: 北京的天气很好。",
    "A considerably longer sentence, with punctuation; numbers like 3.14159 and unusual words such as "
    "antidisestablishmentarianism, repeated a few times to make it long. " * 3,
    "Short.",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


class Reference:
    """Pooling computed one text at a time (no padding at all) from transformers' own hidden states."""

    def __init__(self, folder):
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()

    @torch.no_grad()
    def __call__(self, text, strategy, layers=(-1,), max_len=256, mask_cls_sep=False, pair=None):
        enc = self.tokenizer(text, pair, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model(**enc, output_hidden_states=True)
        h = torch.cat([out.hidden_states[layer] for layer in layers], dim=-1)[0]
        ids = enc["input_ids"][0].tolist()
        specials = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id}
        keep = [i for i, t in enumerate(ids) if not (mask_cls_sep and t in specials)] or list(range(len(ids)))
        if strategy == "REDUCE_MEAN":
            return h[keep].mean(0).numpy()
        if strategy == "REDUCE_MAX":
            return h[keep].max(0).values.numpy()
        if strategy == "REDUCE_MEAN_MAX":
            return torch.cat([h[keep].mean(0), h[keep].max(0).values]).numpy()
        if strategy == "CLS_TOKEN":
            return h[0].numpy()
        if strategy == "SEP_TOKEN":
            return h[-1].numpy()
        if strategy == "CLS_POOLED":
            return out.pooler_output[0].numpy()
        if strategy == "NONE":
            return h.numpy()
        raise AssertionError(strategy)


@pytest.fixture(scope="module")
def reference():
    return Reference(default_model_path())


def test_default_matches_sentence_transformers(default_encoder):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path()), device="cpu")
    expected = st.encode(TEXTS, batch_size=3)
    got = default_encoder.encode(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert cosines(got, expected).min() >= 0.99999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert default_encoder.dim == 384


@pytest.mark.parametrize("strategy", ["REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "SEP_TOKEN"])
@pytest.mark.parametrize("layers", [(-1,), (-2,), (0,), (3,), (-1, -4)])
def test_pooling_and_layers_match_reference(reference, strategy, layers):
    enc = Encoder(pooling=strategy, layers=layers, normalize=False, batch_size=4)
    got = enc.encode(TEXTS)
    expected = np.stack([reference(t, strategy, layers) for t in TEXTS])
    assert got.shape == expected.shape == (len(TEXTS), enc.dim)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_pooling_names_are_case_insensitive_aliases(reference):
    a = Encoder(pooling="first_token", normalize=False).encode(TEXTS[:2])
    b = Encoder(pooling="cls_token", normalize=False).encode(TEXTS[:2])
    np.testing.assert_array_equal(a, b)
    c = Encoder(pooling="Last_Token", normalize=False).encode(TEXTS[:2])
    np.testing.assert_allclose(c, np.stack([reference(t, "SEP_TOKEN") for t in TEXTS[:2]]), atol=1e-4)


def test_cls_pooled_uses_the_pooler(reference):
    got = Encoder(pooling="CLS_POOLED", normalize=False).encode(TEXTS)
    np.testing.assert_allclose(got, np.stack([reference(t, "CLS_POOLED") for t in TEXTS]), atol=1e-4)


@pytest.mark.parametrize("strategy", ["REDUCE_MEAN", "REDUCE_MAX"])
def test_mask_cls_sep_leaves_special_tokens_out(reference, strategy):
    got = Encoder(pooling=strategy, mask_cls_sep=True, normalize=False).encode(TEXTS)
    expected = np.stack([reference(t, strategy, mask_cls_sep=True) for t in TEXTS])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    plain = Encoder(pooling=strategy, normalize=False).encode(TEXTS[:1])
    assert not np.allclose(plain[0], got[0], atol=1e-3)  # the masking changed something


def test_none_pooling_gives_token_vectors_with_zero_padding(reference):
    enc = Encoder(pooling="NONE", max_seq_len=None, layers=(-2,))
    got = enc.encode(TEXTS)
    lengths = [len(reference.tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in TEXTS]
    assert got.shape == (len(TEXTS), max(lengths), 384)
    for row, text, n in zip(got, TEXTS, lengths):
        np.testing.assert_allclose(row[:n], reference(text, "NONE", (-2,)), atol=1e-4)
        assert not row[n:].any()
    fixed = Encoder(pooling="NONE", max_seq_len=64).encode(TEXTS[:2])
    assert fixed.shape == (2, 64, 384)  # an int max_seq_len fixes the padded length, as in bert-as-service


def test_pairs_match_the_tokenizers_own_pair_encoding(default_encoder, reference):
    pairs = [("then do it right", "then do it better"), ("我爱北京", "天安门"), ("", "empty first part")]
    texts = [f"{a} ||| {b}" for a, b in pairs]
    items = default_encoder.tokenize(texts)
    for item, (a, b) in zip(items, pairs):
        enc = reference.tokenizer(a, b)
        assert item.windows[0] == enc["input_ids"]
        assert item.type_ids[0] == enc["token_type_ids"]
    got = Encoder(normalize=False).encode(texts)
    expected = np.stack([reference(a, "REDUCE_MEAN", pair=b) for a, b in pairs])
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("max_len", [5, 9, 16])
def test_pair_truncation_is_longest_first_like_the_tokenizer(reference, max_len):
    enc = Encoder(max_seq_len=max_len)
    a = "one two three four five six seven eight"
    for b in ["alpha", "alpha beta gamma delta epsilon zeta eta theta iota kappa", "x y z"]:
        item = enc.tokenize([f"{a} ||| {b}"])[0]
        assert item.windows[0] == reference.tokenizer(a, b, truncation=True, max_length=max_len)["input_ids"]
        assert len(item.windows[0]) <= max_len


def test_truncation_and_max_seq_len_none(reference):
    long_text = TEXTS[5]
    got = Encoder(max_seq_len=12, normalize=False).encode([long_text])
    np.testing.assert_allclose(got[0], reference(long_text, "REDUCE_MEAN", max_len=12), atol=1e-4)
    enc = Encoder(max_seq_len=None)
    assert enc.max_seq_len == 512
    assert enc.tokenize(["word " * 2000])[0].num_tokens == 512


def test_order_is_restored_after_length_sorting(default_encoder):
    together = default_encoder.encode(TEXTS, batch_size=2)
    one_by_one = np.concatenate([default_encoder.encode([t]) for t in TEXTS])
    assert cosines(together, one_by_one).min() > 0.99999


def test_show_tokens_and_pretokenized_input(default_encoder):
    vectors, tokens = default_encoder.encode(["Hello world's end", "a ||| b"], show_tokens=True)
    assert tokens[0] == ["[CLS]", "hello", "world", "'", "s", "end", "[SEP]"]
    assert tokens[1] == ["[CLS]", "a", "[SEP]", "b", "[SEP]"]
    pre = default_encoder.encode([tokens[0][1:-1], ["a", "|||", "b"]], is_tokenized=True)
    assert cosines(pre, vectors).min() > 0.99999
    _, toks = default_encoder.encode([["what", "##s", "up", "|||", "fine", "notawordpiece"]], is_tokenized=True,
                                     show_tokens=True)
    assert toks[0] == ["[CLS]", "what", "##s", "up", "[SEP]", "fine", "[UNK]", "[SEP]"]


def test_long_text_chunking_combines_windows_by_token_count(default_encoder):
    enc = Encoder(long_text="chunk", max_seq_len=32, chunk_overlap=8, normalize=False)
    words = " ".join(f"w{i % 97}" for i in range(5000))
    item = enc.tokenize([words])[0]
    assert len(item.windows) > 10 and all(len(w) <= 32 for w in item.windows)
    assert sum(item.weights) >= item.num_tokens - 2 * len(item.windows)
    got = enc.encode([words, "short text"])
    plain = Encoder(max_seq_len=32, normalize=False)
    window_vectors = plain.embed([type(item)([w], [t], [n]) for w, t, n in zip(item.windows, item.type_ids, item.weights)])
    weights = np.array(item.weights, dtype=np.float64)
    expected = (window_vectors * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    np.testing.assert_allclose(got[1], plain.encode(["short text"])[0], atol=1e-5)
    truncated = plain.encode([words])
    assert cosines(got[:1], truncated).item() < 0.999  # the whole text counted, not just its first window


def test_dtype_float16_and_normalize_switch():
    half = Encoder(dtype="float16").encode(TEXTS[:3])
    full = Encoder().encode(TEXTS[:3])
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), full, atol=2e-3)
    raw = Encoder(normalize=False).encode(TEXTS[:3])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert cosines(raw, full).min() > 0.99999


def test_empty_input_gives_an_empty_array(default_encoder):
    out = default_encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    vectors, tokens = default_encoder.encode([], show_tokens=True)
    assert vectors.shape == (0, 384) and tokens == []
    assert Encoder(pooling="REDUCE_MEAN_MAX").encode([]).shape == (0, 768)


@pytest.mark.parametrize("texts, error, words", [
    ([None], TypeError, "texts[0]"),
    (["ok", 3], TypeError, "texts[1]"),
    ("a plain string", TypeError, "list"),
    (["a ||| b ||| c"], ValueError, "more than one"),
])
def test_bad_texts_are_refused_with_their_position(default_encoder, texts, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        default_encoder.encode(texts)


def test_bad_pretokenized_input_is_refused(default_encoder):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        default_encoder.encode([["ok"], "not a list"], is_tokenized=True)
    with pytest.raises(ValueError, match="more than one"):
        default_encoder.encode([["a", "|||", "b", "|||", "c"]], is_tokenized=True)


@pytest.mark.parametrize("options, error, words", [
    ({"pooling": "AVERAGE"}, ValueError, "REDUCE_MEAN"),
    ({"layers": (7,)}, ValueError, "6 layers"),
    ({"layers": (-7,)}, ValueError, "6 layers"),
    ({"layers": ()}, ValueError, "non-empty"),
    ({"max_seq_len": 2}, ValueError, "between 3"),
    ({"max_seq_len": 513}, ValueError, "512"),
    ({"pooling": "NONE", "long_text": "chunk"}, ValueError, "chunk"),
    ({"long_text": "summarize"}, ValueError, "long_text"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"pooling": "CLS_POOLED", "layers": (-2,)}, ValueError, "pooler"),
])
def test_bad_options_are_refused_at_construction(options, error, words):
    with pytest.raises(error, match=words):
        Encoder(**options)


def test_length_batches_are_the_cheapest_cut_and_cover_every_row_once():
    import itertools

    from bertserve.engine.collate import length_batches

    def cost(bounds, lengths, per_batch):
        return sum((end - start) * lengths[end - 1] + per_batch for start, end in bounds)

    rng = np.random.default_rng(0)
    for trial in range(40):
        lengths = sorted(rng.integers(1, 80, size=int(rng.integers(1, 9))).tolist())
        max_rows, per_batch = int(rng.integers(1, 5)), int(rng.choice([0, 8, 32, 500]))
        max_tokens = None if trial % 2 else int(rng.integers(60, 200))

        def fits(start, end):  # rows and padded tokens within the limits (a single row always fits)
            return 0 < end - start <= max_rows and (
                max_tokens is None or end - start == 1 or (end - start) * lengths[end - 1] <= max_tokens)
        bounds = length_batches(lengths, max_rows, per_batch, max_tokens)
        assert bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and all(fits(s, e) for s, e in bounds)
        cheapest = min(  # every way of cutting the list, by brute force
            cost(list(zip((0, *cuts), (*cuts, len(lengths)))), lengths, per_batch)
            for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k)
            if all(fits(s, e) for s, e in zip((0, *cuts), (*cuts, len(lengths)))))
        assert cost(bounds, lengths, per_batch) == cheapest, (lengths, max_rows, per_batch)
    assert length_batches([], 32, 32) == []
    # one request of short and long texts is cut where padding the short ones to the long ones costs more
    assert length_batches([5] * 10 + [60] * 4, 32, 32) == [(0, 10), (10, 14)]
    assert length_batches([5] * 10 + [6] * 4, 32, 32) == [(0, 14)]
    assert max(e - s for s, e in length_batches([512] * 20, 32, 32, 4096)) == 8  # 8 rows of 512 tokens at most
    assert length_batches([600], 32, 32, 4096) == [(0, 1)]  # a row longer than the budget stands alone

