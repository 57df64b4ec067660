"""Static-embedding students: a table of token vectors distilled from a transformer, encoded by averaging.

Two stages.

1. Token vectors. Every token of the student vocabulary goes through the teacher on its own, with the
   teacher's pooling (a token of the teacher's own vocabulary by its id; a token of a new vocabulary as text,
   "##" continuation marks dropped), giving one teacher-space vector per token.
2. With a corpus, a fit: the teacher's pooled vectors of the corpus sentences are the targets, and the table
   (stage one's rows plus a residual decayed toward zero) is trained so that the mean of a sentence's token
   rows points where the teacher's vector points (cosine loss, early stopping on held-out sentences). This is
   the tokenlearn idea; the code here is our own.

Between them, a projection to `dims` and frequency weighting, model2vec's recipe: PCA of the token vectors and
Zipf weights estimated from token ranks. Starting the fit from that table (rather than from the corpus
sentences' own directions, `projection="sentences"`) is what keeps Lee50 and WordSim353 while the fit raises
the agreement with the teacher (docs/static-students.md has the figures). For a new vocabulary the SIF weights
a / (a + p(token)) use token frequencies counted on the corpus, since such a vocabulary need not be sorted by
frequency (bert-base-chinese's character vocabulary is not).

The output folder is model2vec's format (see `bertserve.models.static_table`): `bertserve.Encoder`,
`model2vec.StaticModel.from_pretrained` and sentence-transformers (as a StaticEmbedding) load it.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bertserve.errors import BadInput

FORMAT_VERSION = 1
SKIP_TOKENS = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")  # placeholders no text produces


@dataclass
class StaticDistillConfig:
    out: str
    teacher: str | None = None               # None: the bundled all-MiniLM-L6-v2
    vocab: str | None = None                 # a WordPiece vocab.txt or a tokenizer.json; None: the teacher's
    dims: int | None = 256                   # None (or >= the teacher's width): keep the width
    corpus: tuple[str, ...] = ()             # files, one text per line: frequency weights and the fitting stage
    sif_coefficient: float | None = 1e-4     # None: no frequency weighting
    teacher_prefix: str = ""                 # prepended for the teacher only (e5: "query: ")
    corpus_tokens_only: bool = False         # only tokens the corpus uses go through the teacher (others: zero rows)
    fit_epochs: float = 2.0                  # passes over the corpus in the fitting stage (0: none)
    fit_lr: float = 3e-3
    fit_anchor: float = 0.1                  # decay of the fitted residual toward the stage-one rows (0: free rows)
    projection: str = "tokens"               # "tokens": PCA of the token vectors (model2vec's); "sentences": the
                                             # top directions of the corpus's teacher vectors (needs a corpus)
    fit_batch_size: int = 64
    heldout: int = 500                       # corpus texts kept out of the fit: early stopping and the report
    max_texts: int | None = None
    max_seq_len: int = 128                   # teacher token limit on corpus texts
    token_batch_size: int = 256              # vocabulary tokens per teacher batch
    seed: int = 0
    cache_dir: str | None = None             # teacher vectors of the corpus; default ~/.cache/bertserve/teacher-vectors
    threads: int | None = None

    def __post_init__(self):
        if not self.out:
            raise BadInput("out is required: the folder the static model is written to")
        if self.dims is not None and (isinstance(self.dims, bool) or int(self.dims) < 2):
            raise BadInput(f"dims must be an int >= 2 or None, got {self.dims!r}")
        if self.sif_coefficient is not None and not 0 < self.sif_coefficient < 1:
            raise BadInput(f"sif_coefficient must be in (0, 1), got {self.sif_coefficient}")
        if self.projection not in ("tokens", "sentences"):
            raise BadInput(f"projection must be 'tokens' or 'sentences', got {self.projection!r}")
        if self.projection == "sentences" and not self.corpus:
            raise BadInput("projection 'sentences' needs a corpus")
        if self.fit_anchor < 0:
            raise BadInput(f"fit_anchor must be >= 0, got {self.fit_anchor}")
        if self.fit_epochs < 0 or self.fit_lr <= 0 or self.fit_batch_size < 1:
            raise BadInput("fit_epochs must be >= 0, fit_lr > 0 and fit_batch_size >= 1")
        self.corpus = tuple(str(c) for c in self.corpus)


@dataclass
class FitHistory:
    epochs: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    heldout_cosine: list[float] = field(default_factory=list)
    best_epoch: float = 0.0
    seconds: float = 0.0


def student_tokenizer(config: StaticDistillConfig, teacher):
    """(tokenizers.Tokenizer without padding/truncation, is the teacher's own vocabulary)."""
    from tokenizers import Tokenizer

    if config.vocab is None:
        tok = Tokenizer.from_str(teacher.tokenizer.backend.to_str())
        own = True
    else:
        path = Path(config.vocab)
        if path.suffix == ".json":
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as e:
                raise BadInput(f"vocab {path}: not a tokenizer.json ({e})") from e
        else:
            from bertserve.distill.students import load_vocab_tokenizer
            tok = Tokenizer.from_str(load_vocab_tokenizer(path).backend_tokenizer.to_str())
        own = False
    tok.no_padding()
    tok.no_truncation()
    return tok, own


def _special_ids(tok) -> set[int]:
    """Ids of added/special tokens ([CLS], <s>, [PAD], ...): text never turns into them with specials off."""
    data = json.loads(tok.to_str())
    return {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}


def token_vectors(teacher, tok, own_vocab: bool, config: StaticDistillConfig, log=print,
                  used: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vocab, teacher dim) vectors of every token through the teacher (only the `used` ones where given), and
    a mask of the tokens computed."""
    vocab = tok.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [""] * size
    for t, i in vocab.items():
        tokens[i] = t
    skip = _special_ids(tok)
    keep = np.array([i not in skip and bool(t) and not SKIP_TOKENS.match(t) for i, t in enumerate(tokens)])
    if used is not None:
        keep &= used[:size]
    ids = np.flatnonzero(keep)
    start = time.perf_counter()
    if own_vocab:  # by id: the teacher sees exactly that token (a "##" piece stays a continuation)
        prefix = tok.encode(config.teacher_prefix, add_special_tokens=False).tokens if config.teacher_prefix else []
        inputs, tokenized = [prefix + [tokens[i]] for i in ids], True
    else:  # by text: the teacher's own tokenizer splits the new token as it would in a sentence
        inputs = [config.teacher_prefix + (tokens[i][2:] if tokens[i].startswith("##") and len(tokens[i]) > 2
                                           else tokens[i]) for i in ids]
        tokenized = False
    cache = _token_cache_file(teacher, tok, config, keep)
    if cache is not None and cache.is_file():
        out = np.load(cache)
        if out.shape == (size, teacher.dim):
            log(f"token vectors: {len(ids)} tokens from the cache {cache}")
            return out, keep
    out = np.zeros((size, teacher.dim), dtype=np.float32)
    out[ids] = teacher.encode(inputs, is_tokenized=tokenized, batch_size=config.token_batch_size)
    log(f"token vectors: {len(ids)} tokens through the teacher in {time.perf_counter() - start:.1f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".tmp.npy"), out)
        cache.with_suffix(".tmp.npy").replace(cache)
    return out, keep


def _token_cache_file(teacher, tok, config: StaticDistillConfig, keep: np.ndarray) -> Path | None:
    """Where token vectors are kept when a cache folder is given: keyed by teacher, its settings, the
    vocabulary and the prefix, so a second run with other projection or fitting settings skips the teacher."""
    if not config.cache_dir:
        return None
    import hashlib

    digest = hashlib.sha256()
    for part in (str(Path(teacher.checkpoint.path).resolve()), repr(teacher.config), tok.to_str(),
                 config.teacher_prefix, str(FORMAT_VERSION)):
        digest.update(part.encode() + b"\0")
    if config.corpus_tokens_only:
        digest.update(np.packbits(keep).tobytes())
    return Path(config.cache_dir) / f"tokens-{digest.hexdigest()[:24]}.npy"


def zipf_weights(keep: np.ndarray, a: float) -> np.ndarray:
    """model2vec's estimate without a corpus: the r-th token in id order has probability ~ 1 / (r + 2), counting
    only the tokens text can produce (kept), as model2vec ranks its cleaned vocabulary. Counting BERT's ~1,000
    [unusedN] ids in front as well shifts every rank and costs Lee50 Spearman (0.367 against 0.384)."""
    rank = np.cumsum(keep) - 1
    p = 1 / (rank + 2)
    p /= p[keep].sum()
    return a / (a + p)


def corpus_weights(ids: list[list[int]], n: int, a: float) -> np.ndarray:
    """SIF weights a / (a + p) from token counts (add-one smoothed) on the corpus."""
    counts = np.bincount(np.fromiter((i for row in ids for i in row), dtype=np.int64), minlength=n)[:n]
    p = (counts + 1) / (counts.sum() + n)
    return a / (a + p)


def pca_basis(x: np.ndarray, dims: int, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean subtracted first, (dims, width) rows of principal directions) of x's rows."""
    mean = x.mean(axis=0) if center else np.zeros(x.shape[1], dtype=x.dtype)
    _, _, vt = np.linalg.svd((x - mean).astype(np.float64), full_matrices=False)
    return mean.astype(np.float32), vt[:dims].astype(np.float32)


def _ids_of(tok, texts: list[str], unk_id: int | None, max_len: int) -> list[list[int]]:
    rows = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    return [[i for i in r if i != unk_id][:max_len] for r in rows]


def fit_table(table: np.ndarray, ids: list[list[int]], targets: np.ndarray, held_ids: list[list[int]],
              held_targets: np.ndarray, config: StaticDistillConfig, log=print) -> tuple[np.ndarray, FitHistory]:
    """Train the rows so the mean of a text's rows has a high cosine with its target; keep the best epoch."""
    import torch

    history = FitHistory()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # The rows are the stage-one table plus a residual that AdamW's decoupled decay pulls back toward zero, a
    # bound on how far the fit moves rows away from what the table knew about single words. With the early
    # stop it barely matters at the default (0 and 0.1 measured the same); a larger one keeps rows closer.
    anchor = torch.from_numpy(table.copy())
    residual = torch.zeros_like(anchor, requires_grad=True)
    opt = torch.optim.AdamW([residual], lr=config.fit_lr, weight_decay=config.fit_anchor)

    def bag(flat, offsets):
        return torch.nn.functional.embedding_bag(flat, anchor + residual, offsets, mode="mean")

    y = torch.nn.functional.normalize(torch.from_numpy(targets), dim=-1)
    y_held = torch.nn.functional.normalize(torch.from_numpy(held_targets), dim=-1)
    usable = [i for i, r in enumerate(ids) if r]

    def bag_input(rows):
        flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(r) for r in rows])[:-1]]), dtype=torch.long)
        return flat, offsets

    @torch.no_grad()
    def held_cosine() -> float:
        keep = [i for i, r in enumerate(held_ids) if r]
        if not keep:
            return float("nan")
        pred = bag(*bag_input([held_ids[i] for i in keep]))
        return float(torch.nn.functional.cosine_similarity(pred, y_held[keep], dim=-1).mean())

    best, best_table = held_cosine(), table.copy()
    history.epochs.append(0.0)
    history.heldout_cosine.append(best)
    history.train_loss.append(float("nan"))
    rng = random.Random(config.seed)
    steps_per_epoch = max(1, len(usable) // config.fit_batch_size)
    total = round(config.fit_epochs * steps_per_epoch)
    start = time.perf_counter()
    order: list[int] = []
    losses = []
    for step in range(1, total + 1):
        if len(order) < config.fit_batch_size:
            fresh = usable[:]
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: config.fit_batch_size], order[config.fit_batch_size:]
        pred = bag(*bag_input([ids[i] for i in batch]))
        loss = (1 - torch.nn.functional.cosine_similarity(pred, y[batch], dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % steps_per_epoch == 0 or step == total:
            cos = held_cosine()
            epoch = step / steps_per_epoch
            history.epochs.append(round(epoch, 3))
            history.train_loss.append(float(np.mean(losses)))
            history.heldout_cosine.append(cos)
            losses = []
            log(f"fit epoch {epoch:.2f}: train loss {history.train_loss[-1]:.4f}  held-out cosine {cos:.4f}")
            if not cos <= best:  # a NaN (no held-out text) keeps the latest table
                best, best_table, history.best_epoch = cos, (anchor + residual).detach().numpy(), epoch
    history.seconds = time.perf_counter() - start
    return best_table, history


class StaticDistiller:
    """`run()` builds the table; `save(out)` writes the folder. Holds the teacher for the report."""

    def __init__(self, config: StaticDistillConfig, teacher_encoder=None):
        from bertserve.distill.embedding import read_lines
        from bertserve.encode import Encoder

        self.config = config
        if config.threads:
            import torch
            torch.set_num_threads(config.threads)
        # Raw pooled vectors (normalize off): token vectors keep their length, which model2vec found to act as an
        # implicit weight; the saved model normalizes where the teacher does.
        self.teacher = teacher_encoder or Encoder(model=config.teacher, max_seq_len=config.max_seq_len, normalize=False)
        ckpt = self.teacher.checkpoint
        self.normalize = bool(getattr(ckpt, "default_normalize", False) or self.teacher.config.normalize)
        self.tokenizer, self.own_vocab = student_tokenizer(config, self.teacher)
        unk = json.loads(self.tokenizer.to_str()).get("model", {}).get("unk_token")
        self.unk_id = self.tokenizer.token_to_id(unk) if unk else None
        texts = read_lines(config.corpus, "corpus") if config.corpus else []
        random.Random(config.seed).shuffle(texts)
        if config.max_texts:
            texts = texts[: config.max_texts]
        n_held = min(config.heldout, len(texts) // 5)
        self.heldout, self.train_texts = texts[:n_held], texts[n_held:]
        self.history = FitHistory()
        self.table: np.ndarray | None = None
        self.heldout_targets: np.ndarray | None = None
        self.timing: dict[str, float] = {}

    def run(self, log=print) -> np.ndarray:
        from bertserve.distill.embedding import teacher_vectors

        cfg = self.config
        start = time.perf_counter()
        # every token and corpus text goes through the teacher: on a fresh cache `auto` would time its candidates
        # beside those passes (slowing both) and switch only after them, so the choice is made first
        choice = self.teacher.wait_for_backend()
        if choice is not None:
            self.timing["teacher_backend_s"] = round(time.perf_counter() - start, 1)
            log(f"teacher backend: {self.teacher.backend.name} (auto's choice, {self.timing['teacher_backend_s']} s)")
        used = None
        if cfg.corpus_tokens_only and self.train_texts:
            n_vocab = self.tokenizer.get_vocab_size()
            seen = _ids_of(self.tokenizer, self.train_texts + self.heldout, self.unk_id, cfg.max_seq_len)
            used = np.zeros(max(n_vocab, max(self.tokenizer.get_vocab().values()) + 1), dtype=bool)
            used[[i for row in seen for i in row]] = True
        vectors, keep = token_vectors(self.teacher, self.tokenizer, self.own_vocab, cfg, log, used)
        self.timing["token_vectors_s"] = round(time.perf_counter() - start, 1)
        dims = min(cfg.dims or vectors.shape[1], vectors.shape[1])
        n = len(vectors)
        ids = held_ids = sentence = None
        if self.train_texts:
            t0 = time.perf_counter()
            sentence = teacher_vectors(self.teacher, self.train_texts + self.heldout, cfg)
            self.timing["teacher_corpus_s"] = round(time.perf_counter() - t0, 1)
            sentence = sentence / np.linalg.norm(sentence, axis=1, keepdims=True).clip(1e-12)
            ids = _ids_of(self.tokenizer, self.train_texts, self.unk_id, cfg.max_seq_len)
            held_ids = _ids_of(self.tokenizer, self.heldout, self.unk_id, cfg.max_seq_len)
        if cfg.projection == "sentences":  # uncentred, so the cosines between sentences are kept best
            mean, basis = np.zeros(vectors.shape[1], np.float32), pca_basis(sentence[: len(self.train_texts)], dims,
                                                                            center=False)[1]
        else:
            mean, basis = pca_basis(vectors[keep], dims, center=True)
        table = (vectors - mean) @ basis.T
        if not cfg.sif_coefficient:
            weights = np.ones(n)
        elif ids is not None and not self.own_vocab:  # a new vocabulary need not be sorted by frequency: count
            weights = corpus_weights(ids, n, cfg.sif_coefficient)
        else:
            weights = zipf_weights(keep, cfg.sif_coefficient)
        table = (table * weights[:, None]).astype(np.float32)
        table[~keep] = 0.0
        if self.train_texts:
            targets = sentence @ basis.T  # the teacher's vectors in the table's coordinates
        if self.train_texts and cfg.fit_epochs > 0:
            table = table / np.linalg.norm(table[keep], axis=1).mean()  # unit mean row length: one lr fits all
            self.heldout_targets = sentence[len(self.train_texts):]
            table, self.history = fit_table(table, ids, targets[: len(self.train_texts)], held_ids,
                                            targets[len(self.train_texts):], cfg, log)
            table[~keep] = 0.0
        elif self.train_texts:
            self.heldout_targets = sentence[len(self.train_texts):]
        self.timing["total_s"] = round(time.perf_counter() - start, 1)
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        return self.table

    def info(self) -> dict:
        from bertserve.encode.backends.export_cache import checkpoint_content_hash

        return {"format_version": FORMAT_VERSION, "objective": "static", "config": asdict(self.config),
                "teacher": str(self.teacher.checkpoint.path),
                "teacher_fingerprint": checkpoint_content_hash(self.teacher.checkpoint),
                "teacher_pooling": self.teacher.config.pooling, "normalize": self.normalize,
                "vocabulary": "teacher" if self.own_vocab else str(self.config.vocab),
                "corpus_texts": len(self.train_texts), "heldout_texts": len(self.heldout),
                "timing": self.timing, "fit": asdict(self.history)}

    def save(self, out: str | Path | None = None) -> Path:
        if self.table is None:
            raise RuntimeError("run() first")
        return save_static(self.table, self.tokenizer, out or self.config.out, normalize=self.normalize,
                           base_model=str(self.teacher.checkpoint.path), sif=self.config.sif_coefficient,
                           info=self.info())


def save_static(table: np.ndarray, tokenizer, out: str | Path, *, normalize: bool, base_model: str,
                sif: float | None = None, max_length: int = 512, info: dict | None = None) -> Path:
    """Write a model2vec-format folder that sentence-transformers also reads (modules.json)."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": np.ascontiguousarray(table, dtype=np.float32)}, str(out / "model.safetensors"))
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"model_type": "model2vec", "architectures": ["StaticModel"], "tokenizer_name": base_model,
              "base_model": base_model, "apply_pca": int(table.shape[1]), "sif_coefficient": sif,
              "hidden_dim": int(table.shape[1]), "seq_length": 1000000, "normalize": bool(normalize),
              "pooling": "mean", "max_length": max_length, "embedding_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    modules = [{"idx": 0, "name": "0", "path": ".", "type": "sentence_transformers.models.StaticEmbedding"}]
    if normalize:
        (out / "1_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    if info is not None:
        (out / "distill_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")
    return out
