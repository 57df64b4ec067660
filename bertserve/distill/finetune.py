"""Fine-tune a BERT-family checkpoint into a text classifier (the teacher for distillation)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .classify import save_hf_classifier
from .data import read_text_set
from .training import TrainConfig, collate, evaluate, fit, seed_everything, tokenize


def load_labelled(path, label_names=None, tokenizer=None, max_seq_len=128):
    """(TextSet, Tokenized) for a labelled file; label_names pins the label set (dev/test follow train)."""
    data = read_text_set(path, label_names=label_names)
    tok = tokenize(tokenizer, data.texts, data.texts_b, max_seq_len, data.label_ids()) if tokenizer else None
    return data, tok


def finetune(model_path, train, dev, out, test=None, config: TrainConfig | None = None) -> dict:
    """Train a classification head (and the encoder under it); save the best-on-dev model to `out`.

    Returns {"dev": metrics, "test": metrics or None, "history": [...], "label_names": [...]}."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = config or TrainConfig()
    seed_everything(config.seed, config.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    train_set, train_tok = load_labelled(train, None, tokenizer, config.max_seq_len)
    labels = train_set.label_names
    _, dev_tok = load_labelled(dev, labels, tokenizer, config.max_seq_len)
    test_tok = load_labelled(test, labels, tokenizer, config.max_seq_len)[1] if test else None
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True)
    pad_id = tokenizer.pad_token_id

    def step_loss(idx, step, total):
        batch = collate([train_tok.features[i] for i in idx], pad_id)
        return F.cross_entropy(model(**batch).logits, torch.as_tensor(train_tok.labels[idx]))

    history = fit(model, [], step_loss, len(train_tok), dev_tok, pad_id, labels, config, desc="finetune")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_hf_classifier(model, tokenizer, labels, out, config.max_seq_len)
    (out / "training_history.json").write_text(json.dumps(history, indent=2))
    return {"dev": evaluate(model, dev_tok, pad_id, labels),
            "test": evaluate(model, test_tok, pad_id, labels) if test_tok else None,
            "history": history, "label_names": labels}

