"""Taggers: a token-classification head on any encoder (HF folder) or a character BiLSTM-CRF (bertserve folder).

Both turn a text into windows of at most `max_seq_len` positions (long texts overlap by a quarter window), and
a window into one tag and one score per character, so the engine, the evaluation and the distiller never
care which kind they hold.

Subword alignment (SentencePiece, WordPiece): a piece covers characters [start, end) of the text (the
tokenizer's offset mapping). Training labels each piece with the tag of its first character (first-piece
labelling); a prediction for a piece goes to all its characters, with B-X on the first and I-X on the rest.
Pieces without text (a lone "▁" before CJK characters, specials) are read but not labelled. An entity edge
inside a piece cannot be expressed; `alignment_loss` counts how often that happens on a data set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertserve.errors import BadInput, NotFound

from .data import OUTSIDE

FORMAT_VERSION = 1
CRF_KIND = "bilstm-crf"
PAD_CHAR, UNK_CHAR = "[PAD]", "[UNK]"


@dataclass
class Window:
    """One model input: ids, and the character range [start, end) of the text each position covers (None for
    specials and text-less pieces). `text` is the index of its text in the request (set by the engine)."""

    ids: list[int]
    spans: list[tuple[int, int] | None]
    text: int = 0
    num_tokens: int = field(init=False)

    def __post_init__(self):
        self.num_tokens = len(self.ids)

    @property
    def chars(self) -> tuple[int, int]:
        covered = [s for s in self.spans if s is not None]
        return (covered[0][0], covered[-1][1]) if covered else (0, 0)


def cut_windows(ids: list[int], spans: list, size: int) -> list[tuple[int, int]]:
    """[start, end) position ranges of at most `size` covering the sequence, consecutive ones overlapping by
    about a quarter window so every position is also seen away from a window edge."""
    n = len(ids)
    if n <= size:
        return [(0, n)]
    step = max(1, size - size // 4)
    out, start = [], 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            return out
        start += step


def _i_of(tag_names: list[str]) -> np.ndarray:
    """Index map B-X -> I-X (others to themselves): the tag a piece's second and later characters get."""
    index = {t: i for i, t in enumerate(tag_names)}
    return np.array([index.get("I-" + t[2:], i) if t.startswith("B-") else i for i, t in enumerate(tag_names)])


class Tagger:
    """What every tagger kind offers (see the module docstring)."""

    tag_names: list[str]
    max_seq_len: int
    path: str
    model: nn.Module
    kind: str

    @property
    def labels(self) -> list[str]:
        return sorted({t[2:] for t in self.tag_names if t != OUTSIDE})

    def windows(self, text: str) -> list[Window]:
        raise NotImplementedError

    def char_tags(self, windows: list[Window]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per window: (first character, tag id per character, score per character)."""
        raise NotImplementedError

    def tag_texts(self, texts: list[str]) -> list[list[str]]:
        """One tag per character of each text (evaluation, peers): windows merged as the engine does."""
        from .engine import merge_windows

        per_text = [self.windows(t) for t in texts]
        flat = [w for ws in per_text for w in ws]
        rows = self.char_tags(flat) if flat else []
        out, k = [], 0
        for text, ws in zip(texts, per_text):
            tags, _ = merge_windows(len(text), rows[k:k + len(ws)])
            out.append([self.tag_names[i] for i in tags])
            k += len(ws)
        return out


class TokenTagger(Tagger):
    """An HF token-classification folder (teacher or bert:layers=N student)."""

    kind = "token-classification"

    def __init__(self, path, max_seq_len: int | None = None, batch_size: int = 32, model=None, tokenizer=None):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.path = str(path)
        meta = _read_meta(path) if model is None else {}
        self.model = (model if model is not None else AutoModelForTokenClassification.from_pretrained(self.path)).eval()
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(self.path)
        if not getattr(self.tokenizer, "is_fast", False):
            raise BadInput(f"{path}: NER needs a fast tokenizer (offset mappings); this one is not")
        config = self.model.config
        self.tag_names = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.max_seq_len = int(max_seq_len or meta.get("max_seq_len") or 128)
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._to_inside = _i_of(self.tag_names)

    def pieces(self, text: str) -> tuple[list[int], list]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        spans = []
        for tok, (s, e) in zip(enc.tokens(), enc["offset_mapping"]):
            has_text = e > s and tok.replace("\u2581", "").replace("##", "") != ""
            spans.append((s, e) if has_text else None)
        return enc["input_ids"], spans

    def windows(self, text: str) -> list[Window]:
        ids, spans = self.pieces(text)
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        out = []
        for a, b in cut_windows(ids, spans, self.max_seq_len - 2):
            out.append(Window([cls] + ids[a:b] + [sep], [None] + spans[a:b] + [None]))
        return out

    @torch.no_grad()
    def window_logits(self, windows: list[Window]) -> list[np.ndarray]:
        """Per window: logits per position (specials included), batched by similar length."""
        self.model.eval()
        order = sorted(range(len(windows)), key=lambda i: windows[i].num_tokens)
        out = [None] * len(windows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = pad_ids([windows[i].ids for i in idx], self.pad_id)
            logits = self.model(**batch).logits.float().numpy()
            for i, row in zip(idx, logits):
                out[i] = row[:windows[i].num_tokens]
        return out

    def char_logits(self, window: Window, logits: np.ndarray) -> tuple[int, np.ndarray]:
        """Piece logits -> per-character logits: a piece's later characters take its B-X evidence as I-X."""
        lo, hi = window.chars
        out = np.zeros((hi - lo, logits.shape[1]), dtype=np.float32)
        out[:, 0] = 1e4  # characters no piece covers (spaces) are O
        for span, row in zip(window.spans, logits):
            if span is None:
                continue
            s, e = span
            out[s - lo] = row
            if e - s > 1:
                inside = np.full_like(row, -1e4)
                np.logaddexp.at(inside, self._to_inside, row)
                out[s - lo + 1:e - lo] = inside
        return lo, out

    def char_tags(self, windows):
        rows = []
        for w, logits in zip(windows, self.window_logits(windows)):
            lo, char_logits = self.char_logits(w, logits)
            probs = _softmax(char_logits)
            rows.append((lo, probs.argmax(1), probs.max(1)))
        return rows


def alignment_loss(tokenizer_tagger: TokenTagger, examples) -> dict:
    """How many gold entities have an edge inside a piece (first-piece labelling cannot express them)."""
    total = broken = 0
    for ex in examples:
        _, spans = tokenizer_tagger.pieces(ex.text)
        starts = {s for s, _ in filter(None, spans)}
        ends = {e for _, e in filter(None, spans)}
        for s, e, _ in ex.entities:
            total += 1
            broken += (s not in starts) or (e not in ends)
    return {"entities": total, "edge_inside_piece": broken, "fraction": broken / max(total, 1)}


class BiLstmCrf(nn.Module):
    """Characters -> embedding -> BiLSTM -> tag scores -> CRF (pytorch-crf) for a consistent tag sequence."""

    def __init__(self, vocab_size: int, num_tags: int, embedding_dim: int = 128, hidden: int = 128,
                 layers: int = 1, dropout: float = 0.1):
        super().__init__()
        from torchcrf import CRF

        self.config = {"vocab_size": vocab_size, "num_tags": num_tags, "embedding_dim": embedding_dim,
                       "hidden": hidden, "layers": layers, "dropout": dropout}
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.emit = nn.Linear(2 * hidden, num_tags)
        self.crf = CRF(num_tags, batch_first=True)

    def emissions(self, input_ids, attention_mask):
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(input_ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        return self.emit(self.drop(out))

    def nll(self, emissions, tags, attention_mask):
        """CRF negative log-likelihood per sequence, averaged."""
        return -self.crf(emissions, tags, mask=attention_mask.bool(), reduction="mean")

    def decode(self, emissions, attention_mask) -> list[list[int]]:
        return self.crf.decode(emissions, mask=attention_mask.bool())


class CharCrfTagger(Tagger):
    """A bertserve BiLSTM-CRF folder: config.json, chars.json (the character table), model.safetensors."""

    kind = CRF_KIND

    def __init__(self, path=None, max_seq_len: int | None = None, batch_size: int = 64, *, model=None,
                 chars=None, tag_names=None):
        if model is None:
            meta = _read_meta(path)
            model = BiLstmCrf(**meta["model"])
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
            chars = json.loads((Path(path) / "chars.json").read_text(encoding="utf-8"))
            tag_names = meta["tags"]
            max_seq_len = max_seq_len or meta.get("max_seq_len")
        self.path = str(path)
        self.model = model.eval()
        self.chars = list(chars)
        self.char_ids = {c: i for i, c in enumerate(self.chars)}
        self.tag_names = list(tag_names)
        self.max_seq_len = int(max_seq_len or 256)
        self.batch_size = batch_size

    def encode_chars(self, text: str) -> list[int]:
        unk = self.char_ids[UNK_CHAR]
        return [self.char_ids.get(c, unk) for c in text]

    def windows(self, text: str) -> list[Window]:
        ids = self.encode_chars(text)
        return [Window(ids[a:b], [(i, i + 1) for i in range(a, b)])
                for a, b in cut_windows(ids, None, self.max_seq_len)]

    @torch.no_grad()
    def char_tags(self, windows):
        self.model.eval()
        rows = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: windows[i].num_tokens)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = pad_ids([windows[i].ids for i in idx], 0)
            emissions = self.model.emissions(batch["input_ids"], batch["attention_mask"])
            probs = torch.softmax(emissions, -1).numpy()
            for i, path, p in zip(idx, self.model.decode(emissions, batch["attention_mask"]), probs):
                tags = np.asarray(path, dtype=np.int64)
                rows[i] = (windows[i].chars[0], tags, p[np.arange(len(tags)), tags])
        return rows

    def save(self, out_dir, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "chars.json").write_text(json.dumps(self.chars, ensure_ascii=False))
        meta = {"task": "ner", "kind": CRF_KIND, "format_version": FORMAT_VERSION, "tags": self.tag_names,
                "max_seq_len": self.max_seq_len, "model": self.model.config, **(extra or {})}
        (out / "config.json").write_text(json.dumps({"bertserve": meta}, indent=1, ensure_ascii=False))


def char_table(texts, min_count: int = 1) -> list[str]:
    """[PAD], [UNK], then every character seen at least `min_count` times (by frequency)."""
    from collections import Counter

    counts = Counter(c for t in texts for c in t)
    return [PAD_CHAR, UNK_CHAR] + [c for c, n in counts.most_common() if n >= min_count]


def save_token_tagger(model, tokenizer, tag_names: list[str], out_dir, max_seq_len: int, extra=None) -> None:
    model.config.id2label = dict(enumerate(tag_names))
    model.config.label2id = {t: i for i, t in enumerate(tag_names)}
    model.config.bertserve = {"task": "ner", "kind": TokenTagger.kind, "max_seq_len": int(max_seq_len),
                              "format_version": FORMAT_VERSION, **(extra or {})}
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def load_tagger(path, max_seq_len: int | None = None) -> Tagger:
    """Whatever tagger folder `bertserve finetune --task ner` or `distill --task ner` wrote."""
    meta = _read_meta(path)
    if meta.get("kind") == CRF_KIND:
        return CharCrfTagger(path, max_seq_len)
    return TokenTagger(path, max_seq_len)


def _read_meta(path) -> dict:
    """The bertserve block of a tagger folder's config.json; an HF token-classification folder trained
    elsewhere has none and is read as a token tagger."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise NotFound(f"{path}: not a tagger folder (no config.json)")
    config = json.loads(cfg.read_text(encoding="utf-8"))
    meta = config.get("bertserve") or {}
    if meta.get("task") == "ner":
        return meta
    if not meta and any(a.endswith("ForTokenClassification") for a in config.get("architectures") or []):
        return {"task": "ner", "kind": TokenTagger.kind}
    raise BadInput(f"{path} is not an NER tagger (train one with `bertserve finetune --task ner`)")


def pad_ids(rows: list[list[int]], pad_id: int) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
