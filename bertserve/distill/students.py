"""Transformer students built from a teacher: fewer layers (copied from the teacher) or narrower (random).

Spec strings, ``kind:key=value,...``:

    bert:layers=3                               teacher's width, 3 layers copied from the teacher (DistilBERT/RBT3 idea)
    bert:layers=3,pick=alternate                which teacher layers: spread (default), alternate, bottom, top,
                                                or explicit indices joined by ':' (pick=0:2:4)
    bert:layers=4,hidden=312,heads=12,ff=1200   narrower (TinyBERT-4 shape): random initialisation
    bert:layers=3,init=random                   teacher's width but random weights

``bert`` means "the teacher's own transformer architecture" (BERT, XLM-RoBERTa, MPNet, ... any AutoModel with
one list of encoder layers). With another vocabulary (``student_tokenizer``) a RoBERTa-family teacher gets a
plain BERT student, because a WordPiece vocab.txt has no RoBERTa position offset; tokens whose text the
teacher's vocabulary also has start from the teacher's embedding of that text, the rest from the mean of
the teacher's pieces for it.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bertserve.errors import BadInput

PICKS = ("spread", "alternate", "bottom", "top")
_BERT_KEYS = {"layers", "hidden", "heads", "ff", "pick", "init"}
_FF_NAMES = ("intermediate_size", "hidden_dim")
_VOCAB_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


@dataclass(frozen=True)
class BertStudentSpec:
    layers: int
    hidden: int | None = None   # None: the teacher's
    heads: int | None = None
    ff: int | None = None
    pick: str | tuple[int, ...] = "spread"
    init: str | None = None     # "teacher" | "random" | None (teacher when the widths allow it)

    def __str__(self) -> str:
        parts = [f"layers={self.layers}"]
        for key in ("hidden", "heads", "ff", "init"):
            if getattr(self, key) is not None:
                parts.append(f"{key}={getattr(self, key)}")
        if self.pick != "spread":
            pick = ":".join(map(str, self.pick)) if isinstance(self.pick, tuple) else self.pick
            parts.append(f"pick={pick}")
        return "bert:" + ",".join(parts)


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"kind:a=1,b=2"`` -> ``("kind", {"a": "1", "b": "2"})``; shared by every student family."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadInput(f"student spec must be a non-empty string like 'bert:layers=3', got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise BadInput(f"student spec {spec!r}: {item!r} is not key=value")
        if key.strip() in options:
            raise BadInput(f"student spec {spec!r}: {key.strip()!r} given twice")
        options[key.strip()] = value.strip()
    return kind.strip().lower(), options


def _positive_int(spec: str, key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadInput(f"student spec {spec!r}: {key}={value!r} is not an integer") from None
    if n <= 0:
        raise BadInput(f"student spec {spec!r}: {key} must be positive, got {n}")
    return n


def parse_bert_spec(spec: str) -> BertStudentSpec:
    kind, opts = split_spec(spec)
    if kind != "bert":
        raise BadInput(f"student spec {spec!r}: kind {kind!r} is not a transformer student ('bert:...')")
    unknown = set(opts) - _BERT_KEYS
    if unknown:
        raise BadInput(f"student spec {spec!r}: unknown option(s) {sorted(unknown)}; known: {sorted(_BERT_KEYS)}")
    if "layers" not in opts:
        raise BadInput(f"student spec {spec!r}: 'layers=N' is required")
    ints = {k: _positive_int(spec, k, opts[k]) for k in ("layers", "hidden", "heads", "ff") if k in opts}
    pick: str | tuple[int, ...] = opts.get("pick", "spread")
    if pick not in PICKS:
        try:
            pick = tuple(int(i) for i in pick.split(":"))
        except ValueError:
            raise BadInput(f"student spec {spec!r}: pick must be one of {PICKS} or indices like 0:2:4") from None
        if len(pick) != ints["layers"]:
            raise BadInput(f"student spec {spec!r}: pick names {len(pick)} layers but layers={ints['layers']}")
    init = opts.get("init")
    if init not in (None, "teacher", "random"):
        raise BadInput(f"student spec {spec!r}: init must be 'teacher' or 'random', got {init!r}")
    if "hidden" in ints and "heads" in ints and ints["hidden"] % ints["heads"]:
        raise BadInput(f"student spec {spec!r}: hidden={ints['hidden']} is not divisible by heads={ints['heads']}")
    return BertStudentSpec(pick=pick, init=init, **ints)


def pick_layers(pick: str | tuple[int, ...], n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer index for each student layer."""
    if n_student > n_teacher:
        raise BadInput(f"student has {n_student} layers but the teacher only {n_teacher}")
    if isinstance(pick, tuple):
        bad = [i for i in pick if not 0 <= i < n_teacher]
        if bad:
            raise BadInput(f"pick names teacher layers {bad}, but the teacher has layers 0..{n_teacher - 1}")
        return list(pick)
    if pick == "bottom":
        return list(range(n_student))
    if pick == "top":
        return list(range(n_teacher - n_student, n_teacher))
    if pick == "alternate":
        step = max(n_teacher // n_student, 1)
        return [i * step for i in range(n_student)]
    # spread: evenly spaced and ending at the last layer, so the student's output space starts as the teacher's
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module list holding the transformer blocks, found by its length rather than by class name."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return name, module
    raise BadInput(f"{type(model).__name__}: no list of {n} encoder layers found; not a supported teacher")


def _ff_name(config) -> str:
    for name in _FF_NAMES:
        if hasattr(config, name):
            return name
    raise BadInput(f"{type(config).__name__}: no feed-forward width field ({_FF_NAMES})")


def _position_offset(model: nn.Module) -> int:
    # RoBERTa-family models number positions from padding_idx + 1; BERT from 0.
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return pad + 1 if isinstance(pad, int) else 0


def _student_config(teacher: nn.Module, spec: BertStudentSpec, vocab_size: int | None, pad_id: int | None):
    tc = teacher.config
    if vocab_size is not None and _position_offset(teacher):
        from transformers import BertConfig

        config = BertConfig(
            hidden_size=tc.hidden_size, num_attention_heads=tc.num_attention_heads,
            intermediate_size=getattr(tc, _ff_name(tc)), hidden_act=getattr(tc, "hidden_act", "gelu"),
            layer_norm_eps=getattr(tc, "layer_norm_eps", 1e-12),
            max_position_embeddings=min(512, tc.max_position_embeddings - _position_offset(teacher)),
            type_vocab_size=2)
    else:
        config = copy.deepcopy(tc)
    config.num_hidden_layers = spec.layers
    if spec.hidden:
        config.hidden_size = spec.hidden
    if spec.heads:
        config.num_attention_heads = spec.heads
    if spec.ff:
        setattr(config, _ff_name(config), spec.ff)
    if config.hidden_size % config.num_attention_heads:
        raise BadInput(f"student hidden={config.hidden_size} is not divisible by heads={config.num_attention_heads}")
    if vocab_size is not None:
        config.vocab_size = vocab_size
        config.pad_token_id = pad_id if pad_id is not None else 0
    return config


def _copy_layers(student: nn.Module, teacher: nn.Module, picks: list[int]) -> None:
    s_name, s_layers = encoder_layers(student)
    _, t_layers = encoder_layers(teacher)
    for i, j in enumerate(picks):
        src, dst = t_layers[j].state_dict(), s_layers[i].state_dict()
        if set(src) != set(dst) or any(src[k].shape != dst[k].shape for k in dst):
            raise BadInput(f"teacher layer {j} does not fit student layer {i} ({s_name}); use init=random")
        s_layers[i].load_state_dict(src)


def _copy_outside_layers(student: nn.Module, teacher: nn.Module, same_vocab: bool) -> None:
    """Embeddings (except a foreign word table), pooler and encoder-level tensors with matching shapes."""
    s_name, _ = encoder_layers(student)
    t_state = teacher.state_dict()
    offset = _position_offset(teacher) - _position_offset(student)
    with torch.no_grad():
        for key, dst in student.state_dict().items():
            if key.startswith(s_name + ".") or key not in t_state:
                continue
            src = t_state[key]
            if "word_embeddings" in key and not same_vocab:
                continue
            if "position_embeddings" in key and offset:
                src = src[offset: offset + dst.shape[0]]
            elif "token_type_embeddings" in key and src.shape[0] < dst.shape[0]:
                src = torch.cat([src, src[:1].expand(dst.shape[0] - src.shape[0], -1)])
            if src.shape == dst.shape:
                dst.copy_(src)


def token_text(token: str) -> tuple[str, bool]:
    """(surface text, starts a word) of a WordPiece or SentencePiece token."""
    if token.startswith("##"):
        return token[2:], False
    if token.startswith("\u2581"):
        return token[1:], True
    return token, True


def transfer_embeddings(student: nn.Module, teacher: nn.Module, student_tokenizer, teacher_tokenizer) -> float:
    """Start each student token's embedding from the teacher's embedding of the same text.

    Returns the fraction of the student vocabulary found as one teacher token. The rest get the mean of the
    teacher pieces that the teacher tokenizer cuts the text into; tokens with no text keep their random start.
    """
    t_emb = teacher.get_input_embeddings().weight
    s_emb = student.get_input_embeddings().weight
    if t_emb.shape[1] != s_emb.shape[1]:
        raise BadInput(f"embedding widths differ (teacher {t_emb.shape[1]}, student {s_emb.shape[1]})")
    t_vocab = teacher_tokenizer.get_vocab()
    exact = 0
    with torch.no_grad():
        for token, sid in student_tokenizer.get_vocab().items():
            text, word_start = token_text(token)
            if not text or (token.startswith("[") and token.endswith("]")):
                continue
            for candidate in (("\u2581" + text, text) if word_start else (text, "##" + text)):
                if candidate in t_vocab:
                    s_emb[sid] = t_emb[t_vocab[candidate]]
                    exact += 1
                    break
            else:
                pieces = teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
                if pieces:
                    s_emb[sid] = t_emb[pieces].mean(0)
    return exact / max(len(student_tokenizer), 1)


def build_student(teacher: nn.Module, spec: BertStudentSpec | str, *, student_tokenizer=None,
                  teacher_tokenizer=None) -> nn.Module:
    """A student transformer for ``teacher`` (an HF AutoModel); ``student_tokenizer`` for another vocabulary."""
    if isinstance(spec, str):
        spec = parse_bert_spec(spec)
    tc = teacher.config
    same_vocab = student_tokenizer is None
    vocab_size = None if same_vocab else len(student_tokenizer)
    pad_id = None if same_vocab else student_tokenizer.pad_token_id
    config = _student_config(teacher, spec, vocab_size, pad_id)
    same_width = config.hidden_size == tc.hidden_size and getattr(config, _ff_name(config)) == getattr(tc, _ff_name(tc))
    init = spec.init or ("teacher" if same_width else "random")
    if init == "teacher" and not same_width:
        raise BadInput(f"{spec}: init=teacher needs the teacher's widths (hidden {tc.hidden_size}, "
                         f"ff {getattr(tc, _ff_name(tc))}); use init=random for a narrower student")
    picks = pick_layers(spec.pick, spec.layers, tc.num_hidden_layers)
    if same_vocab or not _position_offset(teacher):
        student = type(teacher)(config)
    else:
        from transformers import BertModel

        student = BertModel(config, add_pooling_layer=False)
    student.config.distill_init = {"init": init, "teacher_layers": picks if init == "teacher" else None}
    if init == "teacher":
        _copy_layers(student, teacher, picks)
        _copy_outside_layers(student, teacher, same_vocab)
        if not same_vocab and teacher_tokenizer is not None:
            transfer_embeddings(student, teacher, student_tokenizer, teacher_tokenizer)
    return student.eval()


def load_vocab_tokenizer(vocab_file: str | Path, lowercase: bool | None = None):
    """A BertTokenizerFast over a WordPiece vocab.txt, with a clear error when the file is not one."""
    from transformers import BertTokenizerFast

    path = Path(vocab_file)
    if not path.is_file():
        raise BadInput(f"student vocab {path}: no such file")
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInput(f"student vocab {path}: not a UTF-8 text file (expected a WordPiece vocab.txt)") from None
    missing = [t for t in _VOCAB_SPECIALS if t not in tokens]
    if len(tokens) < 10 or missing:
        raise BadInput(f"student vocab {path}: not a WordPiece vocab.txt ({len(tokens)} lines, "
                         f"missing {missing or 'enough entries'})")
    if lowercase is None:
        cased = sum(1 for t in tokens if t[:1].isupper() and not t.startswith("["))
        lowercase = cased < 0.01 * len(tokens)
    # from_pretrained on a folder: transformers 5 ignores vocab_file= and would leave 5 tokens.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / "vocab.txt")
        tok = BertTokenizerFast.from_pretrained(tmp, do_lower_case=lowercase)
    if len(tok) < len(set(tokens)) * 0.99:
        raise BadInput(f"student vocab {path}: tokenizer kept only {len(tok)} of {len(tokens)} entries")
    return tok
