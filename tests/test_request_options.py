"""Per-call encoding options (pooling, layers, normalize, max_seq_len) and token explanations (POST /tokenize's
answer): each equal to an Encoder configured that way / to the model's own tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from bertserve.errors import BadInput
from conftest import exact_encoder

TEXTS = ["A man is playing a guitar.", "The bank raised interest rates on Tuesday after a long meeting.", "hello",
         "Is this a question ||| Yes it is"]


@pytest.mark.parametrize("options", [
    {"pooling": "CLS_TOKEN"},
    {"pooling": "REDUCE_MAX", "layers": (-2,)},
    {"pooling": "REDUCE_MEAN_MAX", "layers": (-1, 1), "normalize": True},
    {"max_seq_len": 8, "normalize": False},
    {"layers": (0,), "mask_cls_sep": True},
])
def test_per_call_options_equal_an_encoder_configured_so(default_encoder, options):
    configured = exact_encoder(**options)
    assert np.allclose(default_encoder.encode(TEXTS, **options), configured.encode(TEXTS), atol=1e-6)


def test_two_poolings_in_one_batch_share_the_forward_pass(default_encoder):
    cls = default_encoder.variant(pooling="CLS_TOKEN", layers=(-2,))
    mean = default_encoder.base
    items = default_encoder.tokenize(TEXTS, variant=cls) + default_encoder.tokenize(TEXTS, variant=mean)
    rows = default_encoder.embed(items)  # one batch holding both kinds of items
    assert np.allclose(np.stack(rows[:len(TEXTS)]), exact_encoder(pooling="CLS_TOKEN", layers=(-2,)).encode(TEXTS),
                       atol=1e-6)
    assert np.allclose(np.stack(rows[len(TEXTS):]), default_encoder.encode(TEXTS), atol=1e-6)


def test_token_vectors_per_call(default_encoder):
    got = default_encoder.encode(TEXTS[:2], pooling="NONE", max_seq_len=16)
    want = exact_encoder(pooling="NONE", max_seq_len=16).encode(TEXTS[:2])
    assert got.shape == want.shape == (2, 16, 384) and np.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("options, match", [
    ({"pooling": "AVERAGE"}, "unknown pooling 'AVERAGE'"),
    ({"layers": (9,)}, "layer 9 is out of range"),
    ({"max_seq_len": 100000}, "max_seq_len must be between"),
    ({"pooling": "NONE", "long_text": "chunk"}, "NONE pooling.*chunk"),
    ({"temperature": 1}, "unknown encoding option"),
])
def test_bad_options_are_refused_naming_the_option(default_encoder, options, match):
    with pytest.raises(BadInput, match=match):
        default_encoder.encode(["x"], **options)


def _reference(tokenizer, text, max_len):
    """The model's own tokenizer, with offsets; special tokens' spans as None."""
    a, _, b = (part.strip() for part in text.partition("|||")) if "|||" in text else (text, None, None)
    enc = tokenizer(a, b, truncation=True, max_length=max_len, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    shift_b = text.index(b, text.index("|||")) if b else 0
    seq = enc.sequence_ids()
    offsets = [None if special else [s + (shift_b if sid == 1 else text.index(a)), e + (shift_b if sid == 1 else text.index(a))]
               for (s, e), special, sid in zip(enc["offset_mapping"], enc["special_tokens_mask"], seq)]
    return enc["input_ids"], tokenizer.convert_ids_to_tokens(enc["input_ids"]), offsets


@pytest.mark.parametrize("max_len", [8, 128])
def test_explained_tokens_equal_the_models_tokenizer(default_encoder, max_len):
    texts = TEXTS + ["  leading spaces and an emoji 🙂 ||| second part  "]
    for text, got in zip(texts, default_encoder.explain_tokens(texts, max_seq_len=max_len)):
        ids, tokens, offsets = _reference(default_encoder.checkpoint.tokenizer, text, max_len)
        assert (got["ids"], got["tokens"], got["offsets"]) == (ids, tokens, offsets)
        assert all(text[s:e].strip() for s, e in (o for o in offsets if o is not None))
    assert default_encoder.explain_tokens(["word " * 50], max_seq_len=8)[0]["truncated"] is True
    assert default_encoder.explain_tokens(["word"], max_seq_len=8)[0]["truncated"] is False
