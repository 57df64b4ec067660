"""Vocabulary trimming: keep the tokens a corpus uses, drop the rest of the embedding table.

A multilingual model spends most of its parameters on the word-embedding table (multilingual-e5-small: 96M of
118M on 250k SentencePiece pieces); a student for one language needs a few tens of thousands. ``trim_vocab``
counts the tokens the model's own tokenizer gives on a corpus, keeps those seen at least ``min_count`` times
plus every special token plus a fallback set (by default every single-character token, so that a text of
unseen words still splits into characters instead of becoming all-unknown), and writes a model folder whose
embedding rows and tokenizer ids are renumbered in the original order (specials keep their low ids, so a
RoBERTa-style padding index stays put).

Equal vectors: for a text whose tokens under the full vocabulary are all kept, the trimmed tokenizer gives the
same tokens (WordPiece is greedy longest-match and Unigram picks the best-scoring segmentation; removing
entries the chosen path does not use changes neither), hence the same ids after renumbering and the same
vectors.

``replace_vocab`` instead puts a WordPiece vocab.txt in place of the model's vocabulary (the bert-base-chinese
character vocabulary for a Chinese student of e5): each new token starts from the model's embedding of the same
text, or the mean of the model's pieces for it (``students.transfer_embeddings``).

Both write every other file of a sentence-transformers folder (modules.json, 1_Pooling, ...) unchanged, so
transformers' AutoModel/AutoTokenizer and sentence-transformers load the result as they loaded the original.
"""
from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from bertserve.distill.report import count_parameters, weights_size_mb
from bertserve.distill.students import token_text
from bertserve.errors import BadInput

FALLBACKS = ("chars", "ascii", "none")
# written here from the trimmed model and tokenizer; never copied from the source folder
_REWRITTEN = {"config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model",
              "added_tokens.json", "trim_vocab.json"}
_NOT_COPIED_DIRS = {"onnx", "openvino"}  # exported graphs carry the old table; re-export the trimmed model


@dataclass
class TrimReport:
    source: str
    out: str
    vocab_before: int
    vocab_after: int
    kept_by_corpus: int
    kept_as_fallback: int
    kept_as_special: int
    corpus_texts: int
    corpus_tokens: int
    corpus_unk_rate: float           # tokenized by the original tokenizer
    params_before: int
    params_after: int
    disk_mb_before: float            # weight files only (MiB, as the distill report)
    disk_mb_after: float
    replaced_vocab: str | None = None
    exact_token_share: float | None = None   # replace_vocab: new tokens found as one token of the old vocab

    def as_dict(self) -> dict:
        return asdict(self)


def _load(model_dir: Path):
    """The folder's model with its own head (a classifier stays a classifier) and its fast tokenizer."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise BadInput(f"{model_dir}: not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput(f"{model_dir}: trimming needs a fast tokenizer (tokenizer.json, or a vocab.txt to convert)")
    arch = (AutoConfig.from_pretrained(str(model_dir)).architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    model, info = (cls or AutoModel).from_pretrained(str(model_dir), output_loading_info=True)
    if any(k.startswith("pooler.") for k in info["missing_keys"]) and getattr(model, "pooler", None) is not None:
        model.pooler = None  # the checkpoint has none; do not save a random one
    return model.eval(), tokenizer


def _fallback_ids(tokenizer, kind: str) -> set[int]:
    if kind not in FALLBACKS:
        raise BadInput(f"fallback must be one of {FALLBACKS}, got {kind!r}")
    if kind == "none":
        return set()
    out = set()
    for token, tid in tokenizer.get_vocab().items():
        text, _ = token_text(token)
        if len(text) == 1 and (kind == "chars" or 32 < ord(text) < 127) or token == "\u2581":
            out.add(tid)
    return out


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(tid for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if added.special)
    return ids


def _count(tokenizer, texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for i in range(0, len(texts), 256):
        for ids in tokenizer(texts[i: i + 256], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def _remap_processor(node, tok_id: dict[str, int]):
    """Rewrite the special-token ids a post_processor holds (TemplateProcessing, Bert/RobertaProcessing)."""
    if isinstance(node, dict):
        if "ids" in node and "tokens" in node:   # TemplateProcessing special token entry
            return {**node, "ids": [tok_id[t] for t in node["tokens"]]}
        return {k: _remap_processor(v, tok_id) for k, v in node.items()}
    if isinstance(node, list):
        if len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], int):  # ["[CLS]", 101]
            return [node[0], tok_id[node[0]]]
        return [_remap_processor(v, tok_id) for v in node]
    return node


def _trimmed_tokenizer_json(data: dict, keep: list[int]) -> dict:
    """The tokenizer.json with only ``keep`` (old ids, ascending) in its vocabulary, renumbered 0..n-1."""
    data = copy.deepcopy(data)
    model, new_id = data["model"], {old: new for new, old in enumerate(keep)}
    if model["type"] == "Unigram":
        vocab = model["vocab"]
        model["vocab"] = [vocab[i] for i in keep]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
        tok_id = {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    elif model["type"] == "WordPiece":
        by_id = {i: t for t, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(keep) if old in by_id}
        tok_id = dict(model["vocab"])
    else:
        raise BadInput(f"tokenizer model {model['type']!r}: trimming supports WordPiece and Unigram (SentencePiece)")
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
        tok_id[added["content"]] = added["id"]
    if data.get("post_processor"):
        data["post_processor"] = _remap_processor(data["post_processor"], tok_id)
    return data


def _with_embedding_rows(model: nn.Module, rows: torch.Tensor, pad_id: int | None) -> nn.Module:
    old = model.get_input_embeddings()
    new = nn.Embedding(rows.shape[0], rows.shape[1], padding_idx=pad_id)
    with torch.no_grad():
        new.weight.copy_(rows)
    model.set_input_embeddings(new)
    model.config.vocab_size = rows.shape[0]
    emb = getattr(getattr(model, "base_model", model), "embeddings", None)  # a classifier's encoder too
    if emb is not None and hasattr(emb, "padding_idx") and pad_id is not None:
        emb.padding_idx = pad_id  # RoBERTa-style position ids count from it
    del old
    return model


def _copy_other_files(src: Path, out: Path) -> None:
    for path in src.iterdir():
        if path.name in _REWRITTEN or path.name.startswith("."):
            continue
        if path.is_dir():
            if path.name not in _NOT_COPIED_DIRS:
                shutil.copytree(path, out / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, out / path.name)


def _read_corpus(corpus) -> list[str]:
    if isinstance(corpus, (str, Path)):
        corpus = [corpus]
    texts: list[str] = []
    for item in corpus:
        path = Path(item)
        if not path.is_file():
            raise BadInput(f"corpus file {path}: no such file")
        try:
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise BadInput(f"corpus file {path}: not UTF-8 text") from None
    return texts


def trim_model(model: nn.Module, tokenizer, texts: list[str], *, min_count: int = 1,
               fallback: str = "chars") -> tuple[nn.Module, object, dict]:
    """``model`` (changed in place) and a new tokenizer with only the tokens ``texts`` use, plus what was kept."""
    from transformers import AutoTokenizer

    if min_count < 1:
        raise BadInput(f"min_count must be at least 1, got {min_count}")
    if not texts:
        raise BadInput("no corpus text to trim the vocabulary by")
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput("trimming needs a fast tokenizer")
    counts = _count(tokenizer, texts)
    n_tok = len(tokenizer)
    specials, fallbacks = _special_ids(tokenizer), _fallback_ids(tokenizer, fallback)
    by_corpus = {i for i, c in counts.items() if c >= min_count and i < n_tok}
    keep = sorted(specials | fallbacks | by_corpus)
    new_id = {old: new for new, old in enumerate(keep)}
    rows = model.get_input_embeddings().weight.detach()[keep]
    _with_embedding_rows(model, rows, new_id.get(tokenizer.pad_token_id))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            setattr(model.config, name, new_id.get(value))
    # the backend's own JSON: the same for a folder with tokenizer.json and one with only a vocab.txt
    data = _trimmed_tokenizer_json(json.loads(tokenizer.backend_tokenizer.to_str()), keep)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in ("vocab.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json"):
            (Path(tmp) / name).unlink(missing_ok=True)  # would describe the old vocabulary
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        _remap_tokenizer_config(Path(tmp) / "tokenizer_config.json", new_id)
        trimmed = AutoTokenizer.from_pretrained(tmp)
    if len(trimmed) != len(keep):
        raise BadInput(f"the trimmed tokenizer loaded with {len(trimmed)} tokens instead of {len(keep)}")
    total = sum(counts.values())
    stats = {"vocab_before": n_tok, "vocab_after": len(keep), "kept_by_corpus": len(by_corpus),
             "kept_as_fallback": len(fallbacks - by_corpus - specials), "kept_as_special": len(specials),
             "corpus_texts": len(texts), "corpus_tokens": total,
             "corpus_unk_rate": counts.get(tokenizer.unk_token_id, 0) / max(1, total)}
    return model, trimmed, stats


def save_model_folder(model: nn.Module, tokenizer, src: Path | None, out: Path) -> None:
    """Save a model and tokenizer into ``out`` with the other files of ``src`` (sentence-transformers modules)."""
    out.mkdir(parents=True, exist_ok=True)
    if src is not None:
        _copy_other_files(src, out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if vocab["type"] == "WordPiece":  # for loaders that read only vocab.txt
        ordered = sorted(vocab["vocab"].items(), key=lambda kv: kv[1])
        (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in ordered), encoding="utf-8")


def _sizes(src: Path, out: Path, params_before: int, model: nn.Module) -> dict:
    return {"source": str(src), "out": str(out), "params_before": params_before,
            "params_after": count_parameters(model), "disk_mb_before": round(weights_size_mb(src), 2),
            "disk_mb_after": round(weights_size_mb(out), 2)}


def _check_out(src: Path, out: Path) -> None:
    if src.resolve() == out.resolve():
        raise BadInput("--out must be another folder than the model's")


def trim_vocab(model_dir: str | Path, out: str | Path, *, texts: list[str] | None = None, corpus=None,
               min_count: int = 1, fallback: str = "chars") -> TrimReport:
    """Write ``model_dir`` with its vocabulary cut to the tokens ``texts`` (or the ``corpus`` files) use."""
    src, out = Path(model_dir), Path(out)
    _check_out(src, out)
    texts = list(texts or []) + (_read_corpus(corpus) if corpus else [])
    if not texts:
        raise BadInput("no corpus text: give corpus files (or texts) with at least one non-empty line")
    model, tokenizer = _load(src)
    params_before = count_parameters(model)
    model, trimmed, stats = trim_model(model, tokenizer, texts, min_count=min_count, fallback=fallback)
    save_model_folder(model, trimmed, src, out)
    report = TrimReport(**stats, **_sizes(src, out, params_before, model))
    (out / "trim_vocab.json").write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    return report


def _remap_tokenizer_config(path: Path, new_id: dict[int, int]) -> None:
    if not path.is_file():
        return
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in cfg:
        cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def replace_vocab(model_dir: str | Path, vocab_file: str | Path, out: str | Path) -> TrimReport:
    """Write ``model_dir`` with the WordPiece ``vocab_file`` in place of its vocabulary, every layer kept.

    A RoBERTa-family model becomes a BERT (a vocab.txt has no RoBERTa position offset); the new embedding rows
    start from the model's embeddings of the same text (see ``students.transfer_embeddings``)."""
    from bertserve.distill.students import (
        BertStudentSpec,
        build_student,
        load_vocab_tokenizer,
        transfer_embeddings,
    )

    src, out = Path(model_dir), Path(out)
    _check_out(src, out)
    model, tokenizer = _load(src)
    new_tok = load_vocab_tokenizer(vocab_file)
    student = build_student(model, BertStudentSpec(layers=model.config.num_hidden_layers, pick="bottom"),
                            student_tokenizer=new_tok)
    exact = transfer_embeddings(student, model, new_tok, tokenizer)
    if hasattr(student.config, "distill_init"):
        del student.config.distill_init
    save_model_folder(student, new_tok, src, out)
    report = TrimReport(vocab_before=len(tokenizer), vocab_after=len(new_tok), kept_by_corpus=0, kept_as_fallback=0,
                        kept_as_special=len(new_tok.all_special_ids), corpus_texts=0, corpus_tokens=0,
                        corpus_unk_rate=0.0, **_sizes(src, out, count_parameters(model), student),
                        replaced_vocab=str(vocab_file), exact_token_share=round(exact, 4))
    (out / "trim_vocab.json").write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    return report
