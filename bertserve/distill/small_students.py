"""Non-transformer students: BiLSTM (Tang et al. 2019) and TextCNN (Kim 2014).

Both read the teacher's tokenizer output (so Chinese is split per character exactly as the teacher
sees it). Their vocabulary is cut down to the token ids that occur in the transfer set: a multilingual
teacher's 250k-entry table would otherwise make the "small" student larger than the teacher's own
transformer layers. `id_map` turns teacher ids into student ids inside the model, so callers feed the
teacher tokenizer's ids unchanged; ids never seen in training go to the student's [UNK] row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bertserve.errors import BadInput

from .students import split_spec

KINDS = ("bilstm", "textcnn")
FORMAT_FILE = "student.json"
FORMAT_NAME = "bertserve-small-student"
FORMAT_VERSION = 1


@dataclass
class SmallStudentConfig:
    kind: str = "bilstm"
    embedding_dim: int = 0          # 0 = the teacher's hidden size (needed to copy its embeddings)
    hidden: int = 192               # BiLSTM units per direction / TextCNN channels per width
    widths: tuple[int, ...] = (2, 3, 4)
    dropout: float = 0.1
    init_embeddings: bool = True    # copy the teacher's word embeddings for the kept tokens
    # filled in when the student is built
    num_labels: int = 0
    teacher_vocab_size: int = 0
    vocab_size: int = 0
    unk_index: int = 0
    pad_index: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BadInput(f"unknown small student {self.kind!r}; choose one of {KINDS}")
        self.widths = tuple(int(w) for w in self.widths)
        if self.hidden < 1 or self.embedding_dim < 0 or not self.widths or min(self.widths) < 1:
            raise BadInput(f"invalid student sizes: hidden={self.hidden}, embedding_dim={self.embedding_dim}, widths={self.widths}")
        if not 0.0 <= self.dropout < 1.0:
            raise BadInput(f"dropout must lie in [0, 1), got {self.dropout}")


def parse_small_spec(spec: str) -> SmallStudentConfig:
    """'bilstm', 'bilstm:hidden=300,emb=256,init=0', 'textcnn:widths=2-3-4,hidden=128'."""
    kind, opts = split_spec(spec)
    if kind not in KINDS:
        raise BadInput(f"unknown small student {kind!r}; choose one of {KINDS}")
    parsers = {"hidden": ("hidden", int), "channels": ("hidden", int), "emb": ("embedding_dim", int),
               "widths": ("widths", lambda v: tuple(int(w) for w in v.split("-"))), "dropout": ("dropout", float),
               "init": ("init_embeddings", lambda v: v.lower() in ("1", "true", "yes", "teacher"))}
    cfg = {}
    for key, value in opts.items():
        if key not in parsers:
            raise BadInput(f"student spec {spec!r}: unknown option {key!r}; known: {sorted(parsers)}")
        field_name, parse = parsers[key]
        try:
            cfg[field_name] = parse(value)
        except ValueError:
            raise BadInput(f"student spec {spec!r}: bad value {value!r} for {key}") from None
    return SmallStudentConfig(kind=kind, **cfg)


class SmallStudent(nn.Module):
    """Embedding -> body (BiLSTM or convolutions) -> classifier; forward returns logits."""

    def __init__(self, config: SmallStudentConfig):
        super().__init__()
        self.config = config
        self.register_buffer("id_map", torch.full((config.teacher_vocab_size,), config.unk_index, dtype=torch.long))
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_index)
        self.dropout = nn.Dropout(config.dropout)
        if config.kind == "bilstm":
            self.lstm = nn.LSTM(config.embedding_dim, config.hidden, batch_first=True, bidirectional=True)
            self.dense = nn.Linear(2 * config.hidden, 2 * config.hidden)
            features = 2 * config.hidden
        else:
            self.convs = nn.ModuleList(nn.Conv1d(config.embedding_dim, config.hidden, w) for w in config.widths)
            features = config.hidden * len(config.widths)
        self.classifier = nn.Linear(features, config.num_labels)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        # token_type_ids is accepted so BERT-style batches can be passed unchanged; a bag of tokens ignores it
        ids = self.id_map[input_ids]
        x = self.dropout(self.embedding(ids))
        lengths = attention_mask.sum(dim=1).clamp(min=1)
        if self.config.kind == "bilstm":
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.lstm(packed)
            # final states of both directions, as Tang et al.; padding never enters the recurrence
            feats = torch.relu(self.dense(torch.cat([h[0], h[1]], dim=-1)))
        else:
            x = x.masked_fill(attention_mask[..., None] == 0, 0.0).transpose(1, 2)
            widest = max(self.config.widths)
            if x.shape[-1] < widest:
                x = nn.functional.pad(x, (0, widest - x.shape[-1]))
            pooled = []
            for conv, width in zip(self.convs, self.config.widths):
                h = torch.relu(conv(x))
                # only windows lying inside the text (or the first one, for texts shorter than the width)
                # take part in the max, so batch padding cannot change a text's prediction
                last = (lengths - width + 1).clamp(min=1)
                valid = torch.arange(h.shape[-1], device=h.device)[None, :] < last[:, None]
                pooled.append(h.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=-1))
            feats = torch.cat(pooled, dim=-1)
        return self.classifier(self.dropout(feats))


def kept_token_ids(id_lists, tokenizer) -> list[int]:
    """Token ids the student keeps: special tokens first, then every id seen in the transfer set."""
    keep = dict.fromkeys(i for i in [tokenizer.pad_token_id, tokenizer.unk_token_id] if i is not None)
    keep.update(dict.fromkeys(tokenizer.all_special_ids))
    for ids in id_lists:
        keep.update(dict.fromkeys(ids))
    return list(keep)


def build_small_student(config: SmallStudentConfig, teacher, tokenizer, id_lists, num_labels: int) -> SmallStudent:
    """teacher: the HF teacher model (for its vocabulary size and, optionally, its word embeddings)."""
    kept = kept_token_ids(id_lists, tokenizer)
    index = {tid: i for i, tid in enumerate(kept)}
    teacher_emb = teacher.get_input_embeddings().weight.detach()
    emb_dim = config.embedding_dim or teacher_emb.shape[1]
    if config.init_embeddings and emb_dim != teacher_emb.shape[1]:
        raise BadInput(f"init=teacher copies the teacher's {teacher_emb.shape[1]}-wide embeddings; "
                         f"drop emb={emb_dim} or set init=0")
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
    cfg = SmallStudentConfig(**{**asdict(config), "embedding_dim": emb_dim, "num_labels": num_labels,
                                "teacher_vocab_size": teacher_emb.shape[0], "vocab_size": len(kept),
                                "unk_index": index[unk], "pad_index": index[tokenizer.pad_token_id]})
    model = SmallStudent(cfg)
    with torch.no_grad():
        model.id_map[torch.tensor(kept)] = torch.arange(len(kept))
        if config.init_embeddings:
            model.embedding.weight.copy_(teacher_emb[torch.tensor(kept)])
    return model


def save_small_student(model: SmallStudent, tokenizer, label_names: list[str], out_dir, max_seq_len: int) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": asdict(model.config), "label_names": list(label_names),
            "max_seq_len": int(max_seq_len)}
    (out / FORMAT_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    tokenizer.save_pretrained(str(out))


def is_small_student(path) -> bool:
    return (Path(path) / FORMAT_FILE).is_file()


def load_small_student(path) -> tuple[SmallStudent, list[str], int | None]:
    meta = json.loads((Path(path) / FORMAT_FILE).read_text())
    if meta.get("format") != FORMAT_NAME or meta.get("version", 0) > FORMAT_VERSION:
        raise BadInput(f"{path}: not a bertserve small student of version <= {FORMAT_VERSION}")
    model = SmallStudent(SmallStudentConfig(**meta["config"]))
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
    return model.eval(), meta["label_names"], meta.get("max_seq_len")
