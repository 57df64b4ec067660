"""Fine-tune a token tagger (the teacher) and distil it into a `bert:layers=N` or a character BiLSTM-CRF student.

The epoch loop, optimiser, schedule and early stopping are the classification distiller's
(`bertserve.distill.training.fit`, with entity F1 on dev as the metric); the KD loss is its
`prediction_loss` (temperature, T^2, soft/hard mix) applied per token instead of per text.

Transfer set: the labelled training lines plus unlabelled texts (`--unlabeled`); the teacher labels all of
them once before training. A bert student reads the teacher's own pieces, so it learns from the teacher's
piece logits directly. The BiLSTM-CRF reads characters: the teacher's piece logits are first spread over
characters (model.TokenTagger.char_logits) and the soft loss sits on the CRF's emission scores, while the
CRF's likelihood learns the gold tags (labelled lines) or the teacher's best tags (unlabelled lines).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertserve.distill.losses import (
    LossConfig,
    prediction_loss,
    soft_target_loss,
    temperature_at,
)
from bertserve.distill.training import TrainConfig, seed_everything
from bertserve.distill.training import fit as fit_epochs
from bertserve.errors import BadInput
from bertserve.models.registry import resolve

from .data import Example, bio_tag_names, bio_tags, label_set, read_examples
from .engine import merge_windows
from .evaluate import cached_evaluation, evaluate_tagger, score_and_report
from .model import (
    BiLstmCrf,
    CharCrfTagger,
    TokenTagger,
    char_table,
    cut_windows,
    pad_ids,
    save_token_tagger,
)

IGNORE = -1  # positions that carry no label (specials, text-less pieces, teacher-only lines for hard CE)
# The new token-classification head's learning rate when fine-tuning: at the body's 1e-4 the head of e5 stays
# on "all O" (nine tokens in ten) for hundreds of steps, which is what a 166-step run with F1 0.0 was.
NER_HEAD_LR = 3e-3


def ner_train_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"metric": "f1", "patience": 0, **overrides})


def load_split(path, labels: list[str] | None = None, limit: int | None = None) -> list[Example]:
    examples = read_examples(path, set(labels) if labels else None)
    return examples[:limit] if limit else examples


def piece_features(tagger: TokenTagger, examples: list[Example], tag_index: dict) -> list[tuple[list, list]]:
    """(ids, labels) per window: each piece labelled with its first character's tag (module docstring of model)."""
    out = []
    for ex in examples:
        tags = bio_tags(ex.text, ex.entities) if ex.entities is not None else None
        for w in tagger.windows(ex.text):
            labels = [IGNORE if (s is None or tags is None) else tag_index[tags[s[0]]] for s in w.spans]
            out.append((w.ids, labels))
    return out


def _collate_labels(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def finetune_ner(model_path, train, dev, out, test=None, config: TrainConfig | None = None,
                 train_limit: int | None = None, dev_limit: int | None = None) -> dict:
    """A token-classification head on `model_path` (any encoder folder), trained on `train`; best-on-dev saved."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    config = config or ner_train_config()
    if config.head_lr is None:
        config = replace(config, head_lr=max(NER_HEAD_LR, config.lr))
    seed_everything(config.seed, config.threads)
    train_set = load_split(train, limit=train_limit)
    labels = label_set(train_set)
    if not labels:
        raise BadInput(f"{train}: no entities in the training data")
    dev_set = load_split(dev, labels, dev_limit)
    tag_names = bio_tag_names(labels)
    model_path, _ = resolve(model_path)  # a folder or a registered name (`bertserve models`)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForTokenClassification.from_pretrained(
        str(model_path), num_labels=len(tag_names), id2label=dict(enumerate(tag_names)),
        label2id={t: i for i, t in enumerate(tag_names)}, ignore_mismatched_sizes=True)
    tagger = TokenTagger(model_path, config.max_seq_len, model=model, tokenizer=tokenizer)
    feats = piece_features(tagger, train_set, {t: i for i, t in enumerate(tag_names)})

    def step_loss(idx, step, total):
        batch = pad_ids([feats[i][0] for i in idx], tagger.pad_id)
        logits = model(**batch).logits
        return F.cross_entropy(logits.flatten(0, 1), _collate_labels([feats[i][1] for i in idx]).flatten(),
                               ignore_index=IGNORE)

    started = time.perf_counter()
    history = fit_epochs(model, [], step_loss, len(feats), None, tagger.pad_id, tag_names, config,
                         desc="finetune ner", evaluate_dev=lambda m: evaluate_tagger(tagger, dev_set))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"base_model": str(model_path), "train": str(train), "train_lines": len(train_set),
                "train_windows": len(feats), "dev_lines": len(dev_set), "training": asdict(config),
                "train_seconds": round(time.perf_counter() - started, 1)}
    save_token_tagger(model, tokenizer, tag_names, out, config.max_seq_len, {"trained": settings})
    (out / "training_history.json").write_text(json.dumps(history, indent=2))
    result = {"dev": evaluate_tagger(tagger, dev_set), "history": history, "labels": labels, "settings": settings}
    if test:
        result["test"] = cached_evaluation(TokenTagger(out), load_split(test, labels))
    (out / "finetune_result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


@dataclass
class NerDistillConfig:
    teacher: str
    student: str                 # "bert:layers=N[,...]" or "bilstm-crf[:embedding=128,hidden=128,layers=1]"
    train: str
    dev: str
    out: str
    test: str | None = None
    unlabeled: str | None = None  # texts without tags (JSONL with "text", People's Daily lines, or plain lines)
    train_limit: int | None = None
    unlabeled_limit: int | None = None
    dev_limit: int | None = None
    training: TrainConfig = field(default_factory=lambda: ner_train_config(lr=1e-4, epochs=3))
    loss: LossConfig = field(default_factory=LossConfig)
    speed_rounds: int = 3
    speed_lines: int = 200       # test lines timed per round (quality is scored on every test line)


def parse_crf_spec(spec: str) -> dict:
    from bertserve.distill.students import split_spec

    kind, opts = split_spec(spec)
    if kind != "bilstm-crf":
        raise BadInput(f"student spec {spec!r}: use bert:layers=N or bilstm-crf[:embedding=128,hidden=128,layers=1]")
    names = {"embedding": "embedding_dim", "hidden": "hidden", "layers": "layers"}
    unknown = set(opts) - set(names)
    if unknown:
        raise BadInput(f"student spec {spec!r}: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        values = {names[k]: int(v) for k, v in opts.items()}
    except ValueError:
        raise BadInput(f"student spec {spec!r}: options are integers") from None
    if any(v <= 0 for v in values.values()):
        raise BadInput(f"student spec {spec!r}: options must be positive")
    return values


def read_unlabeled(path, limit: int | None) -> list[Example]:
    """Texts for the teacher to label: any entity file (its tags are dropped) or one plain text a line."""
    try:
        examples = read_examples(path)
    except BadInput:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        examples = [Example(t.strip(), [], f"{path}:{n}") for n, t in enumerate(lines, 1) if t.strip()]
    examples = [Example(ex.text, None, ex.source) for ex in examples]
    return examples[:limit] if limit else examples


def distill_ner(cfg: NerDistillConfig) -> dict:
    tc = cfg.training
    seed_everything(tc.seed, tc.threads)
    teacher = TokenTagger(cfg.teacher)
    tag_names, labels = teacher.tag_names, teacher.labels
    train = load_split(cfg.train, labels, cfg.train_limit)
    dev = load_split(cfg.dev, labels, cfg.dev_limit)
    extra = read_unlabeled(cfg.unlabeled, cfg.unlabeled_limit) if cfg.unlabeled else []
    known = {ex.text for ex in train}
    extra = [ex for ex in extra if ex.text not in known]  # a labelled line keeps its gold tags
    transfer = train + extra
    kind = cfg.student.strip().partition(":")[0].lower()
    started = time.perf_counter()
    if kind == "bert":
        student, step_loss, n, modules = _bert_student(cfg, teacher, transfer)
    elif kind == "bilstm-crf":
        student, step_loss, n, modules = _crf_student(cfg, teacher, transfer, tag_names)
    else:
        raise BadInput(f"unknown NER student {cfg.student!r}: use bert:layers=N or bilstm-crf")
    history = fit_epochs(student.model, modules, step_loss, n, None, 0, tag_names, tc, desc=f"distill {cfg.student}",
                         evaluate_dev=lambda m: evaluate_tagger(student, dev))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"student": cfg.student, "train_seconds": round(time.perf_counter() - started, 1),
                "train_lines": len(train), "unlabeled_lines": len(extra), "transfer_windows": n,
                "loss": asdict(cfg.loss), "training": asdict(tc)}
    if kind == "bert":
        save_token_tagger(student.model, teacher.tokenizer, tag_names, out, tc.max_seq_len, {"distilled": settings})
    else:
        student.save(out, {"distilled": settings})
    (out / "training_history.json").write_text(json.dumps(history, indent=2))
    test = load_split(cfg.test, labels) if cfg.test else dev
    teacher_history = Path(cfg.teacher) / "training_history.json"
    histories = {"student": history,
                 "teacher": json.loads(teacher_history.read_text()) if teacher_history.is_file() else []}
    from .model import load_tagger

    report = score_and_report({"teacher": teacher, "student": load_tagger(out)}, "teacher", test, cfg.speed_rounds,
                              settings, histories, out, str(cfg.test or cfg.dev), speed_lines=cfg.speed_lines)
    return {"history": history, "report": report, "out": str(out)}


def _bert_student(cfg: NerDistillConfig, teacher: TokenTagger, transfer: list[Example]):
    """Fewer layers copied from the teacher; KD on the teacher's piece logits."""
    from bertserve.distill.students import build_student

    student_model = build_student(teacher.model, cfg.student)
    student = TokenTagger(cfg.teacher, cfg.training.max_seq_len, model=student_model, tokenizer=teacher.tokenizer)
    feats = piece_features(student, transfer, {t: i for i, t in enumerate(teacher.tag_names)})
    t_logits = _teacher_piece_logits(teacher, feats, cfg.loss)

    def step_loss(idx, step, total):
        batch = pad_ids([feats[i][0] for i in idx], teacher.pad_id)
        s = student_model(**batch).logits
        mask = batch["attention_mask"].bool()
        t = _pad_logits([t_logits[i] for i in idx], s.shape[1])
        hard = _collate_labels([feats[i][1] for i in idx])
        return prediction_loss(s[mask], t[mask], hard[mask], cfg.loss, temperature_at(cfg.loss, step, total))

    return student, step_loss, len(feats), []


def _teacher_piece_logits(teacher: TokenTagger, feats, loss: LossConfig) -> list[np.ndarray]:
    from .model import Window

    if loss.alpha == 0.0:
        return [np.zeros((len(ids), len(teacher.tag_names)), np.float32) for ids, _ in feats]
    return teacher.window_logits([Window(ids, [None] * len(ids)) for ids, _ in feats])


def _pad_logits(rows: list[np.ndarray], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width, rows[0].shape[1]))
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.from_numpy(r)
    return out


def teacher_char_logits(teacher: TokenTagger, texts: list[str]) -> list[np.ndarray]:
    """(characters, tags) logits per text: piece logits spread over characters, windows merged."""
    per_text = [teacher.windows(t) for t in texts]
    flat = [w for ws in per_text for w in ws]
    logits = teacher.window_logits(flat) if flat else []
    out, k = [], 0
    for text, ws in zip(texts, per_text):
        rows = [teacher.char_logits(w, lg) for w, lg in zip(ws, logits[k:k + len(ws)])]
        merged, _ = merge_windows(len(text), [(lo, lg, np.zeros(len(lg), np.float32)) for lo, lg in rows])
        if len(merged) != len(text):
            merged = np.zeros((len(text), len(teacher.tag_names)), np.float32)
        out.append(merged.astype(np.float32))
        k += len(ws)
    return out


def _crf_student(cfg: NerDistillConfig, teacher: TokenTagger, transfer: list[Example], tag_names: list[str]):
    """A character BiLSTM-CRF with a learned character table (every character of the transfer set)."""
    options = parse_crf_spec(cfg.student)
    max_len = max(cfg.training.max_seq_len, 2)
    chars = char_table([ex.text for ex in transfer])
    model = BiLstmCrf(len(chars), len(tag_names), **options)
    student = CharCrfTagger(cfg.out, max_len, model=model, chars=chars, tag_names=tag_names)
    tag_index = {t: i for i, t in enumerate(tag_names)}
    if cfg.loss.alpha == 0.0:  # hard labels only: the teacher is not asked (gold lines only are usable)
        transfer = [ex for ex in transfer if ex.entities is not None]
        t_char = [np.zeros((len(ex.text), len(tag_names)), np.float32) for ex in transfer]
    else:
        t_char = teacher_char_logits(teacher, [ex.text for ex in transfer])
    windows = []  # (char ids, hard tags, teacher logits) per window of max_len characters
    for ex, logits in zip(transfer, t_char):
        if ex.entities is not None:
            hard = np.array([tag_index[t] for t in bio_tags(ex.text, ex.entities)], dtype=np.int64)
        else:
            hard = logits.argmax(1) if len(logits) else np.zeros(0, np.int64)
        ids = student.encode_chars(ex.text)
        for a, b in cut_windows(ids, None, max_len):
            if b > a:
                windows.append((ids[a:b], hard[a:b], logits[a:b]))

    def step_loss(idx, step, total):
        batch = pad_ids([windows[i][0] for i in idx], 0)
        mask = batch["attention_mask"]
        em = model.emissions(batch["input_ids"], mask)
        hard = torch.zeros(mask.shape, dtype=torch.long)
        for j, i in enumerate(idx):
            hard[j, :len(windows[i][1])] = torch.from_numpy(windows[i][1])
        loss = (1.0 - cfg.loss.alpha) * model.nll(em, hard, mask) if cfg.loss.alpha < 1 else em.new_zeros(())
        if cfg.loss.alpha > 0:
            t = _pad_logits([windows[i][2] for i in idx], em.shape[1])
            on = mask.bool()
            loss = loss + cfg.loss.alpha * soft_target_loss(em[on], t[on], temperature_at(cfg.loss, step, total))
        return loss

    return student, step_loss, len(windows), []
