"""Loading and running text classifiers: a fine-tuned teacher, a BERT student (both HF folders with a
sequence-classification head) or a BiLSTM/TextCNN student (a bertserve small-student folder).

`Classifier` is an engine (bertserve.engine.contract) served at `POST /classify`; `classify(texts)` runs it
in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertserve.engine.contract import Engine, Prepared
from bertserve.errors import BadInput, BadInputType, MissingFile
from bertserve.models.tokenizer import TextTokenizer

from .small_students import is_small_student, load_small_student
from .training import Tokenized, predict_logits

DEFAULT_MAX_SEQ_LEN = 128


@dataclass
class ClassifyItem:
    features: dict
    num_tokens: int


def has_classification_head(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def label_names_of(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def load_classifier_model(path):
    """(model in eval mode, tokenizer, label names, saved max_seq_len or None) for any classifier folder."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = Path(path)
    if not path.is_dir():
        raise MissingFile(f"classifier folder not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if is_small_student(path):
        model, labels, max_seq_len = load_small_student(path)
        return model, tokenizer, labels, max_seq_len
    if not (path / "config.json").is_file():
        raise BadInput(f"{path}: no config.json; not a model folder")
    config = AutoConfig.from_pretrained(str(path))
    if not has_classification_head(config):
        raise BadInput(f"{path} has no classification head (architectures {config.architectures}); "
                         "fine-tune it first with `bertserve finetune --model PATH ...` and use that output")
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    meta = getattr(config, "bertserve", None) or {}
    return model, tokenizer, label_names_of(config), meta.get("max_seq_len")


def save_hf_classifier(model, tokenizer, label_names: list[str], out_dir, max_seq_len: int) -> None:
    """An HF folder with the head, label names (id2label) and the sequence length it was trained with."""
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    model.config.bertserve = {"task": "classification", "max_seq_len": int(max_seq_len), "format_version": 1}
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise BadInputType(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise BadInput("texts is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadInputType(f"texts[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise BadInput(f"texts[{i}] is empty")
    return list(texts)


class Classifier(Engine):
    """Predicts a label and per-label probabilities for texts ("a ||| b" for sentence pairs, split exactly as
    the Encoder splits them: the same tokenizer wrapper)."""

    kind = "classify"

    def __init__(self, path, max_seq_len: int | None = None, batch_size: int = 32):
        self.path = str(path)
        self.model, self.tokenizer, self.label_names, saved_len = load_classifier_model(path)
        self.max_seq_len = int(max_seq_len or saved_len or DEFAULT_MAX_SEQ_LEN)
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.text_tokenizer = TextTokenizer(self.tokenizer, self.max_seq_len)
        self.use_type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

    @property
    def name(self) -> str:
        return Path(self.path).resolve().name

    @property
    def model_kind(self) -> str:
        return getattr(self.model.config, "kind", None) or getattr(self.model.config, "model_type", "?")

    # -- the engine contract ----------------------------------------------------------------------------
    def prepare(self, inputs, *, is_tokenized: bool = False) -> Prepared:
        return Prepared(self.tokenize(inputs, is_tokenized=is_tokenized))

    def run(self, items: list[ClassifyItem]) -> np.ndarray:
        return self.predict_items(items)

    def finish(self, prepared: Prepared, rows: list) -> list[dict]:
        return self.results(np.stack(rows) if rows else np.zeros((0, len(self.label_names)), np.float32))

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "labels": self.label_names, "model_kind": self.model_kind,
                "max_seq_len": self.max_seq_len}

    # -- in-process use -----------------------------------------------------------------------------------
    def tokenize(self, texts, is_tokenized: bool = False) -> list[ClassifyItem]:
        if is_tokenized:
            raise BadInput("classification takes plain texts, not token lists")
        texts = _check_texts(texts)
        items = []
        for tok in self.text_tokenizer(texts):
            features = {"input_ids": tok.windows[0]}
            if self.use_type_ids:
                features["token_type_ids"] = tok.type_ids[0]
            items.append(ClassifyItem(features, tok.num_tokens))
        return items

    def predict_items(self, items: list[ClassifyItem]) -> np.ndarray:
        """Probabilities, shape (len(items), number of labels)."""
        if not items:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        data = Tokenized([it.features for it in items])
        logits = predict_logits(self.model, data, self.pad_id, self.batch_size)
        return torch.softmax(torch.from_numpy(logits).float(), dim=-1).numpy()

    def predict_proba(self, texts) -> np.ndarray:
        return self.predict_items(self.tokenize(texts))

    def results(self, probs: np.ndarray) -> list[dict]:
        """The /classify response body per text."""
        return [{"label": self.label_names[int(np.argmax(p))],
                 "probabilities": {name: float(v) for name, v in zip(self.label_names, p)}} for p in probs]

    def classify(self, texts) -> list[dict]:
        return self.results(self.predict_proba(texts))
