"""Text -> model inputs: pairs written "a ||| b", pre-tokenized input, truncation and long-text windows.

The model's own fast tokenizer splits text into content tokens; we add the special tokens ourselves from a
template probed once from the tokenizer's post-processor ([CLS] a [SEP] b [SEP] for BERT, <s> a </s></s> b </s>
for RoBERTa). That keeps raw text, pre-tokenized input and long-text windows on one code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from bertserve.errors import BadInput, BadInputType

PAIR_SEPARATOR = "|||"
LONG_TEXT_MODES = ("truncate", "chunk")


@dataclass
class Tokenized:
    """One input text, ready for the model: one window, or several for a chunked long text."""
    windows: list[list[int]]  # input ids of each window, special tokens included
    type_ids: list[list[int]]  # segment ids of each window
    weights: list[int]  # content tokens per window: how much each window counts when they are combined

    @property
    def num_tokens(self) -> int:
        return sum(len(w) for w in self.windows)


@dataclass(frozen=True)
class _Template:
    """Special tokens around one sequence, or around a pair (prefix A middle B suffix), with their segment ids."""
    single: tuple[list[int], list[int]]  # (prefix ids, suffix ids)
    pair: tuple[list[int], list[int], list[int]]  # (prefix, middle, suffix)
    single_types: tuple[list[int], list[int], int]  # (prefix types, suffix types, type of A)
    pair_types: tuple[list[int], list[int], list[int], int, int]  # (prefix, middle, suffix, type of A, type of B)

    @property
    def single_specials(self) -> int:
        return len(self.single[0]) + len(self.single[1])

    @property
    def pair_specials(self) -> int:
        return sum(len(p) for p in self.pair)


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    raise BadInput("the tokenizer's special-token template could not be worked out")


def _probe_template(backend) -> _Template:
    a = backend.encode("a", add_special_tokens=False).ids
    b = backend.encode("b", add_special_tokens=False).ids
    one = backend.encode("a", add_special_tokens=True)
    i = _find(one.ids, a)
    single = (one.ids[:i], one.ids[i + len(a):])
    single_types = (one.type_ids[:i], one.type_ids[i + len(a):], one.type_ids[i] if a else 0)
    two = backend.encode("a", "b", add_special_tokens=True)
    i = _find(two.ids, a)
    j = _find(two.ids, b, i + len(a))
    pair = (two.ids[:i], two.ids[i + len(a):j], two.ids[j + len(b):])
    pair_types = (two.type_ids[:i], two.type_ids[i + len(a):j], two.type_ids[j + len(b):],
                  two.type_ids[i], two.type_ids[j])
    return _Template(single, pair, single_types, pair_types)


def truncate_pair(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths to keep of a pair so that n1 + n2 <= budget, removing from the longer first.

    The same rule as the Hugging Face tokenizers' `longest_first`, so our pairs match theirs token for token.
    """
    if n1 + n2 <= budget:
        return n1, n2
    swap = n1 > n2
    short, long_ = (n2, n1) if swap else (n1, n2)
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    return (long_, short) if swap else (short, long_)


class TextTokenizer:
    """Turns a list of texts (or token lists) into `Tokenized` items for a model with `max_len` positions."""

    def __init__(self, hf_tokenizer, max_len: int, long_text: str = "truncate", chunk_overlap: int | None = None):
        from tokenizers import Tokenizer

        if long_text not in LONG_TEXT_MODES:
            raise BadInput(f"long_text must be one of {LONG_TEXT_MODES}, got {long_text!r}")
        self.hf_tokenizer = hf_tokenizer
        # A private copy: tokenizer.json files often switch on their own truncation and padding.
        self.backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.template = _probe_template(self.backend)
        self.max_len = max_len
        self.long_text = long_text
        window = max_len - self.template.single_specials
        if window < 1:
            raise BadInput(f"max_seq_len {max_len} leaves no room for text after the special tokens")
        self.window = window
        self.overlap = window // 4 if chunk_overlap is None else chunk_overlap
        if not 0 <= self.overlap < window:
            raise BadInput(f"chunk_overlap must be in [0, {window}), got {self.overlap}")
        self.unk_id = hf_tokenizer.unk_token_id
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0

    # -- input checking -------------------------------------------------------------------------------
    @staticmethod
    def _check_texts(texts, is_tokenized: bool) -> None:
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise BadInputType(f"texts must be a list of {'token lists' if is_tokenized else 'strings'}, "
                            f"got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if is_tokenized:
                if isinstance(t, str) or not isinstance(t, Sequence) or not all(isinstance(w, str) for w in t):
                    raise BadInputType(f"texts[{i}] must be a list of token strings when is_tokenized=True, "
                                    f"got {type(t).__name__}")
                if sum(w == PAIR_SEPARATOR for w in t) > 1:
                    raise BadInput(f"texts[{i}] has more than one {PAIR_SEPARATOR!r}: a pair has two parts")
            else:
                if not isinstance(t, str):
                    raise BadInputType(f"texts[{i}] must be a string, got {type(t).__name__}")
                if t.count(PAIR_SEPARATOR) > 1:
                    raise BadInput(f"texts[{i}] has more than one {PAIR_SEPARATOR!r}: a pair has two parts")

    # -- content ids ----------------------------------------------------------------------------------
    def _ids_of_tokens(self, tokens: Sequence[str], index: int) -> list[int]:
        ids = []
        for tok in tokens:
            tid = self.backend.token_to_id(tok)
            if tid is None:
                if self.unk_id is None:
                    raise BadInput(f"texts[{index}]: token {tok!r} is not in the vocabulary and the model has no unknown token")
                tid = self.unk_id
            ids.append(tid)
        return ids

    def _content(self, texts, is_tokenized: bool) -> list[tuple[list[int], list[int] | None]]:
        """Content ids (no special tokens) of each text: (a, b) with b None for a single text."""
        if is_tokenized:
            out = []
            for i, toks in enumerate(texts):
                toks = list(toks)
                if PAIR_SEPARATOR in toks:
                    k = toks.index(PAIR_SEPARATOR)
                    out.append((self._ids_of_tokens(toks[:k], i), self._ids_of_tokens(toks[k + 1:], i)))
                else:
                    out.append((self._ids_of_tokens(toks, i), None))
            return out
        parts_a, parts_b, pair_of = [], [], []
        for t in texts:
            if PAIR_SEPARATOR in t:
                a, b = t.split(PAIR_SEPARATOR)
                parts_a.append(a.strip())
                pair_of.append(len(parts_b))
                parts_b.append(b.strip())
            else:
                parts_a.append(t)
                pair_of.append(None)
        enc_a = self.backend.encode_batch(parts_a, add_special_tokens=False) if parts_a else []
        enc_b = self.backend.encode_batch(parts_b, add_special_tokens=False) if parts_b else []
        return [(ea.ids, None if j is None else enc_b[j].ids) for ea, j in zip(enc_a, pair_of)]

    # -- assembly -------------------------------------------------------------------------------------
    def _single(self, ids: list[int]) -> tuple[list[int], list[int]]:
        (pre, suf), (tpre, tsuf, ta) = self.template.single, self.template.single_types
        return pre + ids + suf, tpre + [ta] * len(ids) + tsuf

    def _pair(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        (pre, mid, suf), (tpre, tmid, tsuf, ta, tb) = self.template.pair, self.template.pair_types
        return pre + a + mid + b + suf, tpre + [ta] * len(a) + tmid + [tb] * len(b) + tsuf

    def _item(self, a: list[int], b: list[int] | None) -> Tokenized:
        if b is not None:
            n1, n2 = truncate_pair(len(a), len(b), self.max_len - self.template.pair_specials)
            ids, types = self._pair(a[:n1], b[:n2])
            return Tokenized([ids], [types], [n1 + n2])
        if len(a) <= self.window or self.long_text == "truncate":
            ids, types = self._single(a[:self.window])
            return Tokenized([ids], [types], [min(len(a), self.window)])
        windows, type_ids, weights = [], [], []
        step = self.window - self.overlap
        for start in range(0, len(a), step):
            part = a[start:start + self.window]
            ids, types = self._single(part)
            windows.append(ids)
            type_ids.append(types)
            weights.append(len(part))
            if start + self.window >= len(a):
                break
        return Tokenized(windows, type_ids, weights)

    def __call__(self, texts, is_tokenized: bool = False) -> list[Tokenized]:
        self._check_texts(texts, is_tokenized)
        return [self._item(a, b) for a, b in self._content(texts, is_tokenized)]

    def tokens(self, item: Tokenized) -> list[str]:
        """The tokens the model saw, special tokens included (all windows of a chunked text, in order)."""
        out = []
        for w in item.windows:
            out.extend(self.backend.id_to_token(i) for i in w)
        return out
