"""What fine-tuning and distillation share: tokenized sets, padded batches, AdamW with linear warm-up
and decay, and an epoch loop with early stopping on a dev metric."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bertserve.engine.collate import pad_batch
from bertserve.errors import BadInput

from .report import classification_metrics


DEV_METRICS = ("accuracy", "macro_f1", "f1")  # f1: entity-level micro F1 (NER)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.1          # fraction of all steps spent warming the learning rate up from 0
    weight_decay: float = 0.01
    max_seq_len: int = 128
    patience: int = 2            # stop after this many epochs without a better dev metric (0 = never)
    metric: str = "accuracy"     # or "macro_f1" ("f1" for NER): what early stopping and model selection look at
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    freeze_embeddings: bool = False  # keep the word-embedding table fixed (a 250k-token table dominates the step time)
    head_lr: float | None = None     # peak learning rate of the new output head (HF's `classifier.*`); None = lr

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 2:
            raise BadInput(f"epochs, batch_size must be >= 1 and max_seq_len >= 2 "
                             f"(got {self.epochs}, {self.batch_size}, {self.max_seq_len})")
        if not 0.0 <= self.warmup < 1.0:
            raise BadInput(f"warmup is a fraction of the training steps in [0, 1), got {self.warmup}")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise BadInput(f"learning rates must be > 0, got {self.lr} (head {self.head_lr})")
        if self.metric not in DEV_METRICS:
            raise BadInput(f"metric must be one of {DEV_METRICS}, got {self.metric!r}")


@dataclass
class Tokenized:
    """Unpadded token ids per example (tokenized once, reused every epoch)."""
    features: list[dict]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.features)


def tokenize(tokenizer, texts, texts_b=None, max_seq_len: int = 128, labels=None) -> Tokenized:
    pairs = texts_b is not None and any(b is not None for b in texts_b)
    if pairs and any(b is None for b in texts_b):
        raise BadInput("either every example has text_b or none does")
    enc = tokenizer(list(texts), list(texts_b) if pairs else None, truncation=True, max_length=max_seq_len)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    labels = np.asarray(labels if labels is not None else [-1] * len(features), dtype=np.int64)
    return Tokenized(features, labels)


def collate(features: list[dict], pad_id: int) -> dict:
    types = [f["token_type_ids"] for f in features] if "token_type_ids" in features[0] else None
    return pad_batch([f["input_ids"] for f in features], pad_id, types)


def logits_of(model: nn.Module, batch: dict):
    """HF sequence classifiers return an output object; the small students return logits."""
    out = model(**batch)
    return out if torch.is_tensor(out) else out.logits


@torch.no_grad()
def predict_logits(model: nn.Module, data: Tokenized, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits in input order; batches of similar length so little time goes to padding."""
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.features[i]["input_ids"]))
    out = [None] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        logits = logits_of(model, collate([data.features[i] for i in idx], pad_id)).float().numpy()
        for i, row in zip(idx, logits):
            out[i] = row
    return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: nn.Module, data: Tokenized, pad_id: int, label_names: list[str]) -> dict:
    pred = predict_logits(model, data, pad_id).argmax(axis=1)
    return classification_metrics(data.labels, pred, len(label_names))


def make_optimizer(modules: list[nn.Module], config: TrainConfig, total_steps: int):
    """AdamW without weight decay on biases and normalisation weights, the output head at `head_lr` when set
    (a randomly initialised head next to a pre-trained body learns slowly at the body's rate: see docs/ner.md);
    linear warm-up then linear decay to 0."""
    groups: dict[tuple[bool, bool], list] = {}
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                head = config.head_lr is not None and name.startswith("classifier.")
                groups.setdefault((head, p.ndim < 2 or "norm" in name.lower()), []).append(p)
    optimizer = torch.optim.AdamW([{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
                                    "lr": config.head_lr if head else config.lr}
                                   for (head, no_decay), params in groups.items()], lr=config.lr)
    warmup = int(config.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int, threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def fit(model: nn.Module, extra_modules: list[nn.Module], step_loss, n_examples: int, dev: Tokenized,
        pad_id: int, label_names: list[str], config: TrainConfig, desc: str = "train",
        evaluate_dev=None) -> list[dict]:
    """Train `model` (plus `extra_modules`, e.g. loss projections) for up to config.epochs.

    step_loss(indices, global_step, total_steps) -> scalar loss for the examples at `indices`.
    evaluate_dev(model) -> dev metrics (default: classification metrics on `dev`); every float in it goes into
    the history as dev_<name>, and config.metric picks the best epoch. The best dev state is restored at the
    end; returns one history row per epoch."""
    from tqdm.auto import tqdm

    if config.freeze_embeddings and hasattr(model, "get_input_embeddings"):
        model.get_input_embeddings().weight.requires_grad_(False)
    steps_per_epoch = math.ceil(n_examples / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer, scheduler = make_optimizer([model, *extra_modules], config, total)
    rng = np.random.default_rng(config.seed)
    history, best, best_state, stale, step = [], -1.0, None, 0, 0
    params = [p for m in (model, *extra_modules) for p in m.parameters() if p.requires_grad]
    for epoch in range(1, config.epochs + 1):
        model.train()
        for m in extra_modules:
            m.train()
        order, losses = rng.permutation(n_examples), []
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} epoch {epoch}/{config.epochs}", disable=not config.progress,
                   leave=False)
        for b in bar:
            loss = step_loss(order[b * config.batch_size:(b + 1) * config.batch_size], step, total)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.close()
        metrics = evaluate_dev(model) if evaluate_dev else evaluate(model, dev, pad_id, label_names)
        if config.metric not in metrics:
            raise BadInput(f"dev metric {config.metric!r} is not computed for this task (have {sorted(metrics)})")
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)),
               **{f"dev_{k}": float(v) for k, v in metrics.items() if isinstance(v, (float, int))}}
        history.append(row)
        if config.progress:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("dev_"))
            print(f"{desc} epoch {epoch}: loss {row['train_loss']:.4f}  {shown}", flush=True)
        score = metrics[config.metric]
        if score > best:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
