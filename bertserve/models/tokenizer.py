"""Text -> model inputs: pairs written "a ||| b", pre-tokenized input, truncation and long-text windows.

The model's own fast tokenizer splits text into content tokens; we add the special tokens ourselves from a
template probed once from the tokenizer's post-processor ([CLS] a [SEP] b [SEP] for BERT, <s> a </s></s> b </s>
for RoBERTa). That keeps raw text, pre-tokenized input and long-text windows on one code path.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from bertserve.errors import BadInput, BadInputType, TooLarge

PAIR_SEPARATOR = "|||"
LONG_TEXT_MODES = ("truncate", "chunk")
# A text that will be truncated is first cut to this many characters per token the model can read, so a
# 10 MB text costs what a page costs (English runs 4-5 characters a token). The cut falls where the
# tokenizer starts a new word, so the tokens kept are exactly those of the whole text; a cut that leaves
# too few tokens (or finds no word start) is widened and tried again, up to the whole text.
CHARS_PER_TOKEN = 8


@dataclass
class Tokenized:
    """One input text, ready for the model: one window, or several for a chunked long text."""
    windows: list[list[int]]  # input ids of each window, special tokens included
    type_ids: list[list[int]]  # segment ids of each window
    weights: list[int]  # content tokens per window: how much each window counts when they are combined
    variant: object = None  # the Encoder variant (one request's own options) it was made for; None: the default

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


def _word_starts(backend) -> re.Pattern:
    """Characters before which the tokenizer always starts a new word, so that cutting a text there
    cannot change any token before the cut: whitespace for WordPiece and byte-level BPE, plus Chinese
    characters where BERT's normalizer splits them off, and only the plain space for SentencePiece (its
    words run from one space to the next; Chinese text without spaces is one word to it)."""
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers") or ()}
    if "BertPreTokenizer" in kinds:
        chinese = (spec.get("normalizer") or {}).get("handle_chinese_chars", False)
        return re.compile(rf"[\s{CJK}]" if chinese else r"\s")
    if kinds & {"Whitespace", "WhitespaceSplit", "ByteLevel"}:
        return re.compile(r"\s")
    return re.compile(" ")


# the ideograph blocks BERT's tokenizer treats as words of their own
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"


def _cut(text: str, limit: int, word_starts: re.Pattern) -> str | None:
    """The text up to the last word start within `limit` characters (trailing whitespace dropped: it can
    make a token of its own), the whole text if it is that short, or None when no word starts there."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    last = word_starts.search(head[::-1])
    if last is None:
        return None
    return head[:limit - 1 - last.start()].rstrip()


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
        self.word_starts = _word_starts(self.backend)
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
        # admission limits (None: none); a server sets them from its config, and breaking one is a 413
        self.max_text_chars: int | None = None      # characters of one text (token characters, pre-tokenized)
        self.max_request_tokens: int | None = None  # tokens of one call, after truncation

    # -- input checking -------------------------------------------------------------------------------
    def _check_size(self, texts, is_tokenized: bool) -> None:
        limit = self.max_text_chars
        if limit is None:
            return
        for i, t in enumerate(texts):
            size = sum(len(w) for w in t) if is_tokenized else len(t)
            if size > limit:
                raise TooLarge(f"texts[{i}] has {size:,} characters; this server takes at most {limit:,} per "
                               "text (max_text_chars): send a shorter text or split it")

    def _check_tokens(self, items: list[Tokenized]) -> None:
        limit = self.max_request_tokens
        if limit is not None:
            total = sum(item.num_tokens for item in items)
            if total > limit:
                raise TooLarge(f"the request has {total:,} tokens after truncation; this server takes at most "
                               f"{limit:,} per request (max_request_tokens): split it into smaller requests")

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
        """Content ids (no special tokens) of each text: (a, b) with b None for a single text.

        Texts that are truncated anyway may come back longer than the window but shorter than the whole
        text: enough to truncate exactly (see CHARS_PER_TOKEN)."""
        truncating = self.long_text == "truncate"
        if is_tokenized:
            out = []
            for i, toks in enumerate(texts):
                toks = list(toks)
                if PAIR_SEPARATOR in toks:
                    k = toks.index(PAIR_SEPARATOR)
                    out.append((self._ids_of_tokens(toks[:k], i), self._ids_of_tokens(toks[k + 1:], i)))
                else:
                    out.append((self._ids_of_tokens(toks[:self.window] if truncating else toks, i), None))
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
        budget = self.max_len - self.template.pair_specials
        need_a = [self.window if j is None else budget for j in pair_of]
        clip_a = [truncating or j is not None for j in pair_of]
        ids_a, cut_a = self._encode_clipped(parts_a, need_a, clip_a)
        ids_b, cut_b = self._encode_clipped(parts_b, [budget] * len(parts_b), [True] * len(parts_b))
        out = [(a, None if j is None else ids_b[j]) for a, j in zip(ids_a, pair_of)]
        # A pair is truncated longest-first, which needs to know which part is the longer. A cut part
        # holds more than the budget and its whole at least as many, so the answer is exact when only one
        # part was cut and the other is shorter; otherwise both parts are tokenized whole.
        for i, j in enumerate(pair_of):
            if j is None or not (cut_a[i] or cut_b[j]):
                continue
            a, b = out[i]
            if (cut_a[i] and cut_b[j]) or (cut_a[i] and len(b) >= len(a)) or (cut_b[j] and len(a) >= len(b)):
                whole_a, whole_b = self.backend.encode_batch([parts_a[i], parts_b[j]], add_special_tokens=False)
                out[i] = (whole_a.ids, whole_b.ids)
        return out

    def _encode_clipped(self, texts: list[str], need: list[int], clip: list[bool]) -> tuple[list, list[bool]]:
        """(content ids of each text, whether they are of a cut text). A text with `clip` set is cut at a
        word start, as short as still yields more than need[i] tokens (widened until it does)."""
        ids: list = [None] * len(texts)
        was_cut = [False] * len(texts)
        todo = [i for i in range(len(texts)) if clip[i]]
        whole = [i for i in range(len(texts)) if not clip[i]]
        factor = CHARS_PER_TOKEN
        while todo:
            heads = [(i, _cut(texts[i], need[i] * factor, self.word_starts)) for i in todo]
            heads = [(i, h) for i, h in heads if h is not None]
            encoded = self.backend.encode_batch([h for _, h in heads], add_special_tokens=False) if heads else []
            done = set()
            for (i, head), enc in zip(heads, encoded):
                if len(head) == len(texts[i]) or len(enc.ids) > need[i]:
                    ids[i], was_cut[i] = enc.ids, len(head) < len(texts[i])
                    done.add(i)
            factor *= 4
            todo = [i for i in todo if i not in done]
            if todo and all(need[i] * factor >= len(texts[i]) for i in todo):
                whole += todo  # widened to the whole text anyway
                todo = []
        if whole:
            for i, enc in zip(whole, self.backend.encode_batch([texts[i] for i in whole], add_special_tokens=False)):
                ids[i] = enc.ids
        return ids, was_cut

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
        self._check_size(texts, is_tokenized)
        items = [self._item(a, b) for a, b in self._content(texts, is_tokenized)]
        self._check_tokens(items)
        return items

    def explain(self, texts: list[str], shift: int = 0) -> list[dict]:
        """What the model sees of each text (its first window): tokens, ids, each token's character span in the
        text (None for special tokens), whether the text was cut to fit, and how many windows it makes.
        `shift` is subtracted from every span (a prompt put in front of the text); tokens of that prefix get None."""
        self._check_texts(texts, False)
        out = []
        for text in texts:
            if PAIR_SEPARATOR in text:
                k = text.index(PAIR_SEPARATOR)
                a, b = text[:k], text[k + len(PAIR_SEPARATOR):]
                parts = [(a.strip(), len(a) - len(a.lstrip())),
                         (b.strip(), k + len(PAIR_SEPARATOR) + len(b) - len(b.lstrip()))]
            else:
                parts = [(text, 0)]
            encs = [self.backend.encode(part, add_special_tokens=False) for part, _ in parts]
            spans = [[(start + at - shift, end + at - shift) for start, end in enc.offsets]
                     for enc, (_, at) in zip(encs, parts)]
            item = self._item(encs[0].ids, encs[1].ids if len(encs) > 1 else None)
            if len(encs) == 1:
                n1 = item.weights[0]
                offsets = [None] * len(self.template.single[0]) + spans[0][:n1] + [None] * len(self.template.single[1])
                truncated = len(item.windows) == 1 and n1 < len(encs[0].ids)
            else:
                pre, mid, suf = self.template.pair
                n1, n2 = truncate_pair(len(encs[0].ids), len(encs[1].ids), self.max_len - self.template.pair_specials)
                offsets = [None] * len(pre) + spans[0][:n1] + [None] * len(mid) + spans[1][:n2] + [None] * len(suf)
                truncated = n1 < len(encs[0].ids) or n2 < len(encs[1].ids)
            offsets = [None if o is None or o[1] <= 0 else [max(o[0], 0), o[1]] for o in offsets]
            ids = item.windows[0]
            out.append({"tokens": [self.backend.id_to_token(i) for i in ids], "ids": list(ids), "offsets": offsets,
                        "num_tokens": len(ids), "truncated": truncated, "windows": len(item.windows)})
        return out

    def tokens(self, item: Tokenized) -> list[str]:
        """The tokens the model saw, special tokens included (all windows of a chunked text, in order)."""
        out = []
        for w in item.windows:
            out.extend(self.backend.id_to_token(i) for i in w)
        return out
