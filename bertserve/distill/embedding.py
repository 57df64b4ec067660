"""Sentence-embedding distillation: a student learns to reproduce the teacher's pooled vectors.

The teacher runs once through bertserve's Encoder, with its own pooling and normalization, and its vectors
are cached on disk. The student is trained with MSE to those vectors (Reimers & Gurevych 2020), optionally
plus a cosine term; with parallel texts both the source and its translation are pulled to the teacher's
vector of the source. A student narrower than the teacher gets a linear projection to the teacher's width.
The result is saved as a sentence-transformers folder, so Encoder, ``bertserve serve`` and
sentence-transformers all load it (see ``export``).
"""
from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertserve.distill.embedding_config import EmbeddingDistillConfig
from bertserve.distill.students import (
    build_student,
    load_vocab_tokenizer,
    parse_bert_spec,
)
from bertserve.encode.pooling import pool
from bertserve.errors import BadInput
from bertserve.settings import cache_dir

# Teacher poolings a student can copy and a sentence-transformers Pooling module can express.
DISTILLABLE_POOLINGS = ("REDUCE_MEAN", "REDUCE_MAX", "FIRST_TOKEN", "REDUCE_MEAN_SQRT_LEN")


@dataclass
class DistillHistory:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_mse: list[float] = field(default_factory=list)
    eval_cosine: list[float] = field(default_factory=list)
    seconds: float = 0.0


def read_lines(paths, what: str = "texts") -> list[str]:
    """Non-empty stripped lines of the given files, first occurrence kept."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen: dict[str, None] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BadInput(f"{what} file {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{what} file {path}: not UTF-8 text") from None
        for line in text.splitlines():
            line = line.strip()
            if line:
                seen.setdefault(line)
    return list(seen)


def read_parallel(paths) -> list[tuple[str, str]]:
    pairs = []
    for line in read_lines(paths, "parallel"):
        src, tab, tgt = line.partition("\t")
        if not tab or not src.strip() or not tgt.strip():
            raise BadInput(f"parallel texts need 'source<TAB>translation' on every line, got {line[:80]!r}")
        pairs.append((src.strip(), tgt.strip()))
    return pairs


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, cosine_weight: float = 0.0) -> torch.Tensor:
    """Mean squared error over all components, plus ``cosine_weight * mean(1 - cos)``."""
    if student.shape != teacher.shape:
        raise BadInput(f"student vectors {tuple(student.shape)} and teacher vectors {tuple(teacher.shape)} differ")
    loss = torch.mean((student - teacher) ** 2)
    if cosine_weight:
        loss = loss + cosine_weight * torch.mean(1 - nn.functional.cosine_similarity(student, teacher, dim=-1))
    return loss


def relation_loss(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """KL(teacher || student) of each row's softmax cosine similarity to ``bank`` (teacher vectors of other texts).

    MSE pulls each vector to its target on its own; which texts are a text's nearest neighbours depends on the
    small differences between similarities that MSE weighs no more than any other direction. This term compares
    the neighbour distributions themselves, at no extra forward pass: the bank holds precomputed teacher vectors.
    """
    bank = nn.functional.normalize(bank, dim=-1)
    t_logits = nn.functional.normalize(teacher, dim=-1) @ bank.T / temperature
    s_logits = nn.functional.normalize(student, dim=-1) @ bank.T / temperature
    return nn.functional.kl_div(s_logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True,
                                reduction="batchmean")


class StudentHead(nn.Module):
    """Pooling (the teacher's strategy), optional projection, optional normalization: what export writes out."""

    def __init__(self, mode: str, in_dim: int, out_dim: int, normalize: bool, allow_projection: bool):
        super().__init__()
        if in_dim != out_dim and not allow_projection:
            raise BadInput(f"student width {in_dim} differs from the teacher's {out_dim} and projection is off; "
                             "allow a projection or choose a student with the teacher's width")
        self.mode, self.normalize = mode, normalize
        self.projection = nn.Linear(in_dim, out_dim) if in_dim != out_dim else None

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(self.mode, hidden, mask, None)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def _cache_dir(config: EmbeddingDistillConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    return cache_dir("teacher-vectors")


def teacher_vectors(encoder, texts: list[str], config: EmbeddingDistillConfig) -> np.ndarray:
    """The teacher's vectors for ``texts``, computed once per (teacher, settings, texts) and cached."""
    digest = hashlib.sha256()
    digest.update(str(Path(encoder.checkpoint.path).resolve()).encode())
    digest.update(repr(encoder.config).encode())
    digest.update(config.teacher_prefix.encode())
    for t in texts:
        digest.update(t.encode() + b"\0")
    path = _cache_dir(config) / f"{digest.hexdigest()[:24]}.npy"
    if path.exists():
        vectors = np.load(path)
        if vectors.shape == (len(texts), encoder.dim):
            return vectors
    vectors = encoder.encode([config.teacher_prefix + t for t in texts]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def _student_model(teacher_ckpt, config: EmbeddingDistillConfig):
    from transformers import AutoModel, AutoTokenizer

    if config.student_init:
        model = AutoModel.from_pretrained(config.student_init)
        tokenizer = (load_vocab_tokenizer(config.student_vocab) if config.student_vocab
                     else AutoTokenizer.from_pretrained(config.student_init))
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise BadInput(f"student {config.student_init} has {model.get_input_embeddings().weight.shape[0]} "
                             f"token embeddings but its tokenizer {len(tokenizer)} tokens")
        return model, tokenizer
    spec = parse_bert_spec(config.student)
    if config.student_vocab:
        tokenizer = load_vocab_tokenizer(config.student_vocab)
        model = build_student(teacher_ckpt.model, spec, student_tokenizer=tokenizer,
                              teacher_tokenizer=teacher_ckpt.tokenizer)
    else:
        tokenizer = teacher_ckpt.tokenizer
        model = build_student(teacher_ckpt.model, spec)
    return model, tokenizer


def pooling_mode(encoder) -> str:
    """The teacher's pooling, checked to be one the saved student can reproduce."""
    cfg = encoder.config
    if cfg.pooling not in DISTILLABLE_POOLINGS:
        raise BadInput(f"teacher pooling {cfg.pooling} cannot be distilled; use one of {DISTILLABLE_POOLINGS}")
    if tuple(cfg.layers) not in ((-1,), (encoder.checkpoint.num_layers,)) or cfg.mask_cls_sep:
        raise BadInput(f"teacher layers {cfg.layers} / mask_cls_sep={cfg.mask_cls_sep}: a distilled student "
                         "reproduces the last layer with special tokens included only")
    return cfg.pooling


class EmbeddingDistiller:
    """Holds the teacher encoder, the data and the student; ``train()`` then ``export.save_student``."""

    def __init__(self, config: EmbeddingDistillConfig, teacher_encoder=None):
        from bertserve import Encoder

        self.config = config
        if config.relation_weight < 0 or (config.relation_weight and (config.relation_temperature <= 0
                                                                      or config.relation_bank < 1)):
            raise BadInput(f"relation term: weight {config.relation_weight} must be >= 0, and when it is on the "
                           f"temperature ({config.relation_temperature}) > 0 and the bank ({config.relation_bank}) >= 1")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.teacher = teacher_encoder or Encoder(model=config.teacher, max_seq_len=config.max_seq_len)
        mode = pooling_mode(self.teacher)
        texts = read_lines(config.texts) if config.texts else []
        pairs = read_parallel(config.parallel) if config.parallel else []
        if not texts and not pairs:
            raise BadInput("no training texts: give --texts (and/or --parallel) files with at least one line")
        rng = random.Random(config.seed)
        rng.shuffle(texts)
        if config.max_texts:
            texts = texts[: config.max_texts]
        n_held = min(config.heldout, len(texts) // 5)
        self.heldout, train_texts = texts[:n_held], texts[n_held:]
        sources = train_texts + [s for s, _ in pairs]
        if not sources:
            raise BadInput("no training texts left after holding out the evaluation texts")
        # The student first: a bad spec or vocab fails before the teacher spends minutes on the corpus.
        torch.manual_seed(config.seed)
        self.student, self.tokenizer = _student_model(self.teacher.checkpoint, config)
        self.trim = None
        if config.trim_vocab:  # before training: the optimizer then never holds the dropped rows
            from bertserve.distill.trim_vocab import trim_model

            self.student, self.tokenizer, self.trim = trim_model(self.student, self.tokenizer, sources,
                                                                 min_count=config.trim_min_count)
        self.head = StudentHead(mode, self.student.config.hidden_size, self.teacher.dim,
                                bool(self.teacher.config.normalize), config.allow_projection)
        vectors = teacher_vectors(self.teacher, sources + self.heldout, config)
        self.targets = torch.from_numpy(vectors[: len(sources)])
        self.heldout_targets = torch.from_numpy(vectors[len(sources):])
        # (student input, row of its teacher vector); a translation shares its source's row
        self.examples = [(t, i) for i, t in enumerate(sources)]
        self.examples += [(tgt, len(train_texts) + k) for k, (_, tgt) in enumerate(pairs)]
        self.history = DistillHistory()

    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_seq_len,
                               return_tensors="pt")
        batch.pop("token_type_ids", None)
        hidden = self.student(**batch).last_hidden_state
        return self.head(hidden, batch["attention_mask"])

    @torch.no_grad()
    def evaluate(self, limit: int = 256) -> tuple[float, float]:
        """(MSE, mean cosine) against the teacher on held-out texts."""
        texts, target = self.heldout[:limit], self.heldout_targets[:limit]
        if not texts:
            return float("nan"), float("nan")
        self.student.eval()
        pred = torch.cat([self.embed(texts[i: i + 64]) for i in range(0, len(texts), 64)])
        cos = nn.functional.cosine_similarity(pred, target, dim=-1).mean()
        return float(embedding_loss(pred, target)), float(cos)

    def _record_eval(self, step: int) -> None:
        mse, cos = self.evaluate()
        self.history.eval_steps.append(step)
        self.history.eval_mse.append(mse)
        self.history.eval_cosine.append(cos)

    def train(self, log=print) -> DistillHistory:
        cfg = self.config
        steps_per_epoch = math.ceil(len(self.examples) / cfg.batch_size)
        total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
        params = list(self.student.parameters()) + list(self.head.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        warm = max(1, int(total * cfg.warmup))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        rng = random.Random(cfg.seed)
        bank_rng = torch.Generator().manual_seed(cfg.seed)
        order: list[int] = []
        start = time.perf_counter()
        self._record_eval(0)
        for step in range(1, total + 1):
            if len(order) < cfg.batch_size:
                fresh = list(range(len(self.examples)))
                rng.shuffle(fresh)
                order += fresh
            idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
            self.student.train()
            pred = self.embed([self.examples[i][0] for i in idx])
            target = self.targets[[self.examples[i][1] for i in idx]]
            loss = embedding_loss(pred, target, cfg.cosine_weight)
            if cfg.relation_weight:
                bank = self.targets[torch.randint(len(self.targets), (cfg.relation_bank,), generator=bank_rng)]
                loss = loss + cfg.relation_weight * relation_loss(pred, target, bank, cfg.relation_temperature)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            self.history.steps.append(step)
            self.history.train_loss.append(loss.item())
            if step % cfg.eval_every == 0 or step == total:
                self._record_eval(step)
                log(f"step {step}/{total}  train loss {loss.item():.3e}  held-out mse "
                    f"{self.history.eval_mse[-1]:.3e}  cosine {self.history.eval_cosine[-1]:.4f}")
        self.history.seconds = time.perf_counter() - start
        self.student.eval()
        return self.history

    def info(self) -> dict:
        return {"config": asdict(self.config), "teacher": str(self.teacher.checkpoint.path),
                "teacher_pooling": self.head.mode, "teacher_normalize": self.head.normalize,
                "train_examples": len(self.examples), "heldout_texts": len(self.heldout), "trim_vocab": self.trim,
                "student_init": getattr(self.student.config, "distill_init", None)
                or {"init": "folder", "folder": self.config.student_init},
                "history": asdict(self.history)}
