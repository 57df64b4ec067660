"""`bertserve train-lm`: train a small GPT-2 from scratch on a text file, nanoGPT-style.

The corpus is tokenized once into one stream of ids (each document opened by the tokenizer's start token and
closed by its end token); training blocks are `context` tokens cut at random offsets, drawn from a generator
seeded by (seed, step) so a resumed run sees exactly the batches the interrupted one would have. The held-out
tail of the corpus (see corpus.split_heldout) is cut into fixed blocks and scored at every eval.

The output folder is a plain transformers folder (config.json, model.safetensors, tokenizer files,
generation_config.json) that `AutoModelForCausalLM.from_pretrained` loads unchanged, plus `train_report.json`
and `loss_curve.png`. `checkpoint/` holds the state a rerun of the same command resumes from.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bertserve.errors import BadInput, Conflict

log = logging.getLogger("bertserve.generate")

REPORT_FILE = "train_report.json"
CURVE_FILE = "loss_curve.png"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainConfig:
    corpus: str
    out: str
    tokenizer: str = "chinese"       # see tokenizers.TOKENIZER_CHOICES
    layers: int = 4
    width: int = 256
    heads: int | None = None          # default: width // 64 (at least 1)
    context: int = 128
    dropout: float = 0.0              # small model, under one epoch: nothing to regularise yet
    batch_size: int = 32
    steps: int = 2000
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    heldout: float = 0.05
    eval_every: int = 200
    eval_blocks: int = 100            # held-out blocks (spread over it) scored at each intermediate eval; all at the end
    max_minutes: float | None = None  # stop early (saving a loadable model) after this much training time
    prune_vocab: bool = False         # keep only the vocabulary entries the training text uses
    bf16: bool = False                # bfloat16 autocast for the matmuls (CPUs with AVX-512 BF16/AMX)
    threads: int | None = None
    seed: int = 0
    max_lines: int | None = None      # read only the first N lines (quick runs, tests)
    baselines: bool = True            # also score unigram and Kneser-Ney bigram models on the same split

    def __post_init__(self):
        self.heads = self.heads or max(1, self.width // 64)
        for name in ("layers", "width", "heads", "context", "batch_size", "steps", "eval_every", "eval_blocks"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise BadInput(f"width {self.width} is not divisible by heads {self.heads}")
        if self.context < 8:
            raise BadInput(f"context must be >= 8 tokens, got {self.context}")
        if not 0 <= self.dropout < 1:
            raise BadInput(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise BadInput(f"lr must be > 0, got {self.lr}")

    def model_fields(self) -> dict:
        """What must match for a checkpoint to be resumed. `steps` is not among them: rerunning with more steps
        continues a finished run (on the new, longer learning-rate schedule)."""
        keys = ("corpus", "tokenizer", "layers", "width", "heads", "context", "batch_size", "lr",
                "warmup", "weight_decay", "heldout", "seed", "max_lines", "dropout", "prune_vocab")
        return {k: getattr(self, k) for k in keys}


@dataclass
class TrainState:
    step: int = 0
    train_loss: list = field(default_factory=list)   # [step, mean loss over the steps since the last entry]
    evals: list = field(default_factory=list)        # [step, held-out loss, held-out perplexity]
    seconds: float = 0.0


def tokenize_stream(tokenizer, docs: list[str]) -> np.ndarray:
    """All documents as one id stream: [start] doc tokens [end], [start] ..."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(docs, add_special_tokens=True)["input_ids"]
    start = tokenizer.bos_token_id
    out = []
    for seq in ids:
        if start is not None and (not seq or seq[0] != start):
            out.append(start)
        out.extend(seq)
        out.append(eos)
    return np.asarray(out, dtype=np.int64)


def heldout_blocks(stream: np.ndarray, context: int) -> np.ndarray:
    n = len(stream) // context
    if n == 0:
        raise BadInput(f"held-out text has {len(stream)} tokens, fewer than one block of {context}")
    return stream[: n * context].reshape(n, context)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _batch(train: np.ndarray, cfg: TrainConfig, step: int) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, step])
    starts = rng.integers(0, len(train) - cfg.context, size=cfg.batch_size)
    return np.stack([train[s: s + cfg.context] for s in starts])


def evaluate(model, blocks: np.ndarray, batch_size: int = 32, bf16: bool = False) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of `blocks`."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(blocks), batch_size):
            x = torch.from_numpy(blocks[i: i + batch_size])
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     x[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += x[:, 1:].numel()
    model.train()
    return total / count


def _save_checkpoint(folder: Path, model, optimizer, cfg: TrainConfig, state: TrainState):
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg.model_fields(),
                "state": asdict(state)}, tmp)
    os.replace(tmp, folder / "state.pt")   # a crash mid-write leaves the previous checkpoint whole


def _load_checkpoint(folder: Path, model, optimizer, cfg: TrainConfig) -> TrainState | None:
    import torch

    path = folder / "state.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved["config"] != cfg.model_fields():
        diff = {k: (saved["config"].get(k), v) for k, v in cfg.model_fields().items() if saved["config"].get(k) != v}
        raise Conflict(f"{folder} holds a checkpoint of a different run (saved vs now: {diff}); "
                       "use another --out or delete the checkpoint folder")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return TrainState(**saved["state"])


def plot_curve(state: TrainState, path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    if state.train_loss:
        s, l = zip(*state.train_loss)
        ax.plot(s, l, label="train loss", lw=1)
    if state.evals:
        s, l, _ = zip(*state.evals)
        ax.plot(s, l, "o-", label="held-out loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_lm(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) and write the output folder; returns the report written to train_report.json."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    from bertserve.tasks.generate.corpus import read_corpus, split_heldout
    from bertserve.tasks.generate.tokenizers import build_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = read_corpus(cfg.corpus, max_lines=cfg.max_lines)
    train_docs, held_docs = split_heldout(docs, cfg.heldout)
    tokenizer = build_tokenizer(cfg.tokenizer, train_docs, prune=cfg.prune_vocab)
    train = tokenize_stream(tokenizer, train_docs)
    blocks = heldout_blocks(tokenize_stream(tokenizer, held_docs), cfg.context)
    if len(train) <= cfg.context:
        raise BadInput(f"training text has {len(train)} tokens: fewer than one block of {cfg.context}")
    vocab_size = len(tokenizer)
    log.info("corpus: %d documents, %d training tokens, %d held-out blocks of %d", len(docs), len(train),
             len(blocks), cfg.context)

    torch.manual_seed(cfg.seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.context, n_embd=cfg.width, n_layer=cfg.layers,
                        n_head=cfg.heads, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    ckpt = out / CHECKPOINT_DIR
    state = _load_checkpoint(ckpt, model, optimizer, cfg) or TrainState()
    if state.step:
        log.info("resuming from %s at step %d", ckpt, state.step)

    # intermediate evals score blocks spread over the whole held-out tail (its first blocks are one day's
    # paper, easier than the rest: they read 113 where the whole tail read 162)
    probe = blocks[:: max(1, len(blocks) // cfg.eval_blocks)][: cfg.eval_blocks]
    model.train()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not progress, desc="train-lm", unit="step")
    window: list[float] = []
    started = time.perf_counter() - state.seconds
    stopped_early = False
    while state.step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, state.step)
        x = torch.from_numpy(_batch(train, cfg, state.step))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window.append(loss.item())
        bar.update(1)
        state.seconds = time.perf_counter() - started
        out_of_time = cfg.max_minutes is not None and state.seconds > cfg.max_minutes * 60
        if state.step % 10 == 0 or state.step == cfg.steps:
            state.train_loss.append([state.step, float(np.mean(window))])
            window = []
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps or out_of_time:
            held = evaluate(model, probe, bf16=cfg.bf16)
            state.evals.append([state.step, held, math.exp(held)])
            bar.set_postfix(loss=f"{state.train_loss[-1][1]:.3f}" if state.train_loss else "-",
                            heldout_ppl=f"{math.exp(held):.1f}")
            _save_checkpoint(ckpt, model, optimizer, cfg, state)
        if out_of_time:
            stopped_early = True
            log.warning("stopping at step %d: --max-minutes %.1f reached", state.step, cfg.max_minutes)
            break
    bar.close()

    final = evaluate(model, blocks, bf16=cfg.bf16)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    unk = tokenizer.unk_token_id
    report = {"config": asdict(cfg), "vocab_size": vocab_size,
              "heldout_unk_rate": float((blocks == unk).mean()) if unk is not None else 0.0, "parameters": model.num_parameters(),
              "documents": {"train": len(train_docs), "heldout": len(held_docs)},
              "tokens": {"train": int(len(train)), "heldout_predicted": int(blocks[:, 1:].size),
                         "seen_in_training": int(state.step * cfg.batch_size * cfg.context)},
              "steps": state.step, "stopped_early": stopped_early, "train_seconds": round(state.seconds, 1),
              "heldout": {"loss": final, "perplexity": math.exp(final)},
              "evals": state.evals, "train_loss": state.train_loss}
    if cfg.baselines:
        from bertserve.tasks.generate.baselines import bigram_perplexity, unigram_perplexity

        report["heldout"]["unigram_perplexity"] = unigram_perplexity(train, blocks, vocab_size)
        report["heldout"]["bigram_kn_perplexity"] = bigram_perplexity(train, blocks, vocab_size)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    plot_curve(state, out / CURVE_FILE, f"train-lm: {cfg.layers} layers, width {cfg.width}, context {cfg.context}")
    return report
