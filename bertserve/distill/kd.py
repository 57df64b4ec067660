"""Distil a fine-tuned classifier (the teacher) into a student: fewer-layer or narrower BERT, BiLSTM, TextCNN.

The transfer set is the labelled training data, plus unlabelled texts, plus synthetic examples
(augment.py); the teacher labels all of it once, before training, and those logits are reused every
epoch. Intermediate targets (hidden states, attention maps) would cost layers x tokens x width floats
per example to keep, so when intermediate losses are on, the teacher runs again (without gradients) on
each batch for them; its logits still come from the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertserve.errors import BadInput

from .augment import AugmentConfig, augment_examples
from .classify import Classifier, load_classifier_model, save_hf_classifier
from .data import TextSet, read_text_set
from .losses import (
    IntermediateLoss,
    LossConfig,
    check_intermediate,
    prediction_loss,
    temperature_at,
)
from .report import count_parameters, measure_speed, weights_size_mb, write_report
from .small_students import KINDS as SMALL_KINDS
from .small_students import build_small_student, parse_small_spec, save_small_student
from .training import (
    TrainConfig,
    collate,
    evaluate,
    fit,
    predict_logits,
    seed_everything,
    tokenize,
)


@dataclass
class DistillConfig:
    teacher: str
    student: str
    train: str
    dev: str
    out: str
    test: str | None = None
    unlabeled: str | None = None
    training: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=3))
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    speed_rounds: int = 3        # 0 = skip the speed measurement in the report
    logit_cache: str | None = None  # folder keeping teacher logits across runs (same teacher, texts and length)
    trim_vocab: bool = False     # bert students: save only the tokens the transfer set uses (+ specials, characters)
    trim_min_count: int = 1


def student_kind(spec: str) -> str:
    kind = spec.strip().partition(":")[0].strip().lower()
    if kind == "bert" or kind in SMALL_KINDS:
        return kind
    raise BadInput(f"unknown student spec {spec!r}; use bert:layers=N[,hidden=..,heads=..,ff=..], bilstm or textcnn")


def build_transfer_set(train: TextSet, unlabeled: TextSet | None, tokenizer, augment: AugmentConfig) -> TextSet:
    synthetic = augment_examples(train.examples, tokenizer, augment)
    extra = unlabeled.examples if unlabeled is not None else []
    return TextSet(train.examples + extra + synthetic, train.label_names, source=train.source)


def make_student(spec: str, teacher, tokenizer, transfer_tok, n_labels: int):
    kind = student_kind(spec)
    if kind == "bert":
        from .students import build_student

        return build_student(teacher, spec), kind
    config = parse_small_spec(spec)
    return build_small_student(config, teacher, tokenizer, [f["input_ids"] for f in transfer_tok.features], n_labels), kind


def teacher_logits_for(teacher, cfg: DistillConfig, data, pad_id: int, n_labels: int) -> np.ndarray:
    """The teacher's logits for the transfer set: computed once per run, or read from cfg.logit_cache."""
    if cfg.loss.alpha == 0.0 and not cfg.loss.uses_intermediate:
        return np.zeros((len(data), n_labels), dtype=np.float32)  # hard labels only: the teacher is not asked
    path = None
    if cfg.logit_cache:
        key = hashlib.sha1(json.dumps([str(Path(cfg.teacher).resolve()), [f["input_ids"] for f in data.features]])
                           .encode()).hexdigest()[:20]
        path = Path(cfg.logit_cache) / f"teacher-logits-{key}.npy"
        if path.is_file():
            return np.load(path)
    logits = predict_logits(teacher, data, pad_id)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, logits)
    return logits


def _teacher_layer_map(student) -> tuple[int, ...] | None:
    """Match each teacher-initialised layer against the teacher layer it was copied from (1-based)."""
    init = getattr(student.config, "distill_init", None) or {}
    picks = init.get("teacher_layers") if isinstance(init, dict) else None
    return tuple(i + 1 for i in picks) if picks else None


def distill(config: DistillConfig) -> dict:
    cfg, tc = config, config.training
    seed_everything(tc.seed, tc.threads)
    teacher, tokenizer, labels, _ = load_classifier_model(cfg.teacher)
    pad_id = tokenizer.pad_token_id
    train = read_text_set(cfg.train, label_names=labels)
    dev = read_text_set(cfg.dev, label_names=labels)
    test = read_text_set(cfg.test, label_names=labels) if cfg.test else None
    unlabeled = read_text_set(cfg.unlabeled, labels="ignore") if cfg.unlabeled else None
    kind = student_kind(cfg.student)
    if cfg.trim_vocab and kind != "bert":
        raise BadInput(f"--trim-vocab applies to transformer students (bert:...), not {cfg.student!r}")
    if cfg.loss.uses_intermediate and kind != "bert":
        check_intermediate(cfg.loss, teacher.config, None, kind)  # raises with a suggestion before any work

    transfer = build_transfer_set(train, unlabeled, tokenizer, cfg.augment)
    transfer_tok = tokenize(tokenizer, transfer.texts, transfer.texts_b, tc.max_seq_len, transfer.label_ids())
    dev_tok = tokenize(tokenizer, dev.texts, dev.texts_b, tc.max_seq_len, dev.label_ids())
    teacher_logits = torch.from_numpy(teacher_logits_for(teacher, cfg, transfer_tok, pad_id, len(labels)))

    student, kind = make_student(cfg.student, teacher, tokenizer, transfer_tok, len(labels))
    loss_cfg = cfg.loss
    if loss_cfg.uses_intermediate and loss_cfg.layer_map is None and _teacher_layer_map(student):
        loss_cfg = LossConfig(**{**asdict(loss_cfg), "layer_map": _teacher_layer_map(student)})
    inter = None
    if loss_cfg.uses_intermediate:
        layer_map = check_intermediate(loss_cfg, teacher.config, student.config, kind)
        inter = IntermediateLoss(loss_cfg, teacher.config, student.config, layer_map)
        if loss_cfg.attention_weight > 0:  # fused attention kernels do not return the attention maps
            teacher.set_attn_implementation("eager")
            student.set_attn_implementation("eager")
    want_attn = inter is not None and loss_cfg.attention_weight > 0

    def step_loss(idx, step, total):
        batch = collate([transfer_tok.features[i] for i in idx], pad_id)
        labels_b = torch.as_tensor(transfer_tok.labels[idx])
        t_logits = teacher_logits[torch.as_tensor(idx)]
        temperature = temperature_at(loss_cfg, step, total)
        if inter is None:
            out = student(**batch)
            s_logits = out if torch.is_tensor(out) else out.logits
            return prediction_loss(s_logits, t_logits, labels_b, loss_cfg, temperature)
        out = student(**batch, output_hidden_states=True, output_attentions=want_attn)
        with torch.no_grad():
            t_out = teacher(**batch, output_hidden_states=True, output_attentions=want_attn)
        wanted = inter.teacher_layers()
        t_hidden = {i: t_out.hidden_states[i] for i in wanted["hidden"]}
        t_attn = {i: t_out.attentions[i - 1] for i in wanted["attention"]}
        return (prediction_loss(out.logits, t_logits, labels_b, loss_cfg, temperature)
                + inter(out, t_hidden, t_attn, batch["attention_mask"]))

    started = time.perf_counter()
    history = fit(student, [inter] if inter is not None else [], step_loss, len(transfer_tok), dev_tok, pad_id,
                  labels, tc, desc=f"distill {cfg.student}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trim = None
    if cfg.trim_vocab and kind == "bert":
        # after training, on the texts it saw: the student's outputs on them are unchanged by the cut
        from .trim_vocab import trim_model

        seen = transfer.texts + [t for t in (transfer.texts_b or []) if t]
        student, tokenizer, trim = trim_model(student, tokenizer, seen, min_count=cfg.trim_min_count)
    if kind == "bert":
        save_hf_classifier(student, tokenizer, labels, out, tc.max_seq_len)
    else:
        save_small_student(student, tokenizer, labels, out, tc.max_seq_len)
    (out / "training_history.json").write_text(json.dumps(history, indent=2))
    settings = {"student": cfg.student, "train_seconds": round(time.perf_counter() - started, 1),
                "transfer_size": len(transfer), "train_size": len(train),
                "augmented": len(transfer) - len(train) - (len(unlabeled) if unlabeled else 0),
                "loss": asdict(loss_cfg), "training": asdict(tc), "augment": asdict(cfg.augment), "trim_vocab": trim}
    report = evaluate_pair(cfg.teacher, str(out), test or dev, tc.max_seq_len, cfg.speed_rounds, settings,
                           {"student": history, "teacher": _saved_history(cfg.teacher)})
    return {"history": history, "report": report, "out": str(out)}


def _saved_history(folder) -> list:
    path = Path(folder) / "training_history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def evaluate_pair(teacher_dir: str, student_dir: str, test: TextSet, max_seq_len: int, speed_rounds: int,
                  settings: dict, histories: dict) -> dict:
    """Load both folders as a server would, score them on `test`, time them side by side, write the report."""
    models = {"teacher": Classifier(teacher_dir, max_seq_len), "student": Classifier(student_dir, max_seq_len)}
    return score_and_report(models, "teacher", test, speed_rounds, settings, histories, student_dir)


def score_and_report(models: dict, teacher: str, test: TextSet, speed_rounds: int, settings: dict,
                     histories: dict, out_dir) -> dict:
    """Quality, size and (interleaved) speed of every Classifier in `models`; report files in out_dir."""
    rows = {}
    for name, clf in models.items():
        if clf.label_names != test.label_names:
            raise BadInput(f"{name} predicts {clf.label_names} but the test set has labels {test.label_names}")
        tok = tokenize(clf.tokenizer, test.texts, test.texts_b, clf.max_seq_len, test.label_ids())
        metrics = evaluate(clf.model, tok, clf.pad_id, clf.label_names)
        rows[name] = {"path": clf.path, "kind": clf.model_kind, "accuracy": metrics["accuracy"],
                      "macro_f1": metrics["macro_f1"], "params": count_parameters(clf.model),
                      "size_mb": weights_size_mb(clf.path)}
    speed_settings = {"backend": "torch fp32 (eager)", "threads": torch.get_num_threads(), "rounds": speed_rounds,
                      "batch_size": next(iter(models.values())).batch_size}
    if speed_rounds > 0:
        texts = [t if b is None else f"{t} ||| {b}" for t, b in zip(test.texts, test.texts_b)]
        for name, speed in measure_speed(models, texts, rounds=speed_rounds).items():
            rows[name].update(speed)
    settings = {**settings, "test_source": test.source, "test_size": len(test), "speed": speed_settings}
    return write_report(out_dir, teacher, rows, histories, settings)

