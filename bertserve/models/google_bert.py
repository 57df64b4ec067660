"""Google's original TensorFlow BERT folders (bert_config.json, vocab.txt, bert_model.ckpt.*) as HF folders.

bert-as-service users hold checkpoints such as chinese_L-12_H-768_A-12. They are converted once, without
TensorFlow, into an ordinary transformers folder (config.json, model.safetensors, vocab.txt, tokenizer
files) in a cache keyed by the checkpoint files' names, sizes and modification times, so later loads
are plain HF loads.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bertserve.errors import MissingFile
from bertserve.models.tf_checkpoint import (
    CheckpointError,
    TensorBundle,
    find_checkpoint_prefix,
)
from bertserve.settings import cache_dir

CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
SOURCE_FILE = "bertserve_tf_source.json"  # written into converted folders; says what they came from
CONVERSION_VERSION = 1
_STALE_SECONDS = 3600

# Names in Google checkpoints that are not part of the encoder: the pre-training heads, the step
# counter, a fine-tuned classifier, and optimizer slots.
_IGNORED = re.compile(r"^(cls/|global_step$|output_weights$|output_bias$)|/(adam_[mv]|Adam(_\d+)?)$")
_REQUIRED_CONFIG = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size")


def is_tf_checkpoint(folder: str | Path) -> bool:
    """True for a folder in Google's layout, even a partial one (loading then names what is missing)."""
    folder = Path(folder)
    hf_weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not folder.is_dir() or any((folder / f).is_file() for f in hf_weights):
        return False
    return ((folder / CONFIG_FILE).is_file() or any(folder.glob("*.index"))
            or any(folder.glob("*.data-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]")))


def read_bert_config(folder: str | Path):
    """bert_config.json -> transformers BertConfig."""
    from transformers import BertConfig
    from transformers.activations import ACT2FN

    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise MissingFile(f"{path} not found: a Google BERT folder needs {CONFIG_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    missing = [k for k in _REQUIRED_CONFIG if k not in raw]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    act = raw.get("hidden_act", "gelu")
    # Google's and bert-as-service's "gelu" is the erf form, which is also transformers' "gelu".
    if act not in ACT2FN:
        raise CheckpointError(f"{path}: hidden_act {act!r} is not an activation transformers knows")
    return BertConfig(
        **{k: int(raw[k]) for k in _REQUIRED_CONFIG}, hidden_act=act,
        hidden_dropout_prob=float(raw.get("hidden_dropout_prob", 0.1)),
        attention_probs_dropout_prob=float(raw.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(raw.get("initializer_range", 0.02)),
        layer_norm_eps=1e-12,  # what Google's layer_norm used; bert_config.json does not record it
        architectures=["BertModel"],
    )


def hf_name(google_name: str) -> str | None:
    """Google variable name -> BertModel parameter name; None for variables that are not the encoder's."""
    if _IGNORED.search(google_name):
        return None
    if not google_name.startswith("bert/"):
        raise CheckpointError(f"unexpected variable {google_name!r}: not a Google BERT encoder variable")
    parts = google_name[len("bert/"):].split("/")
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parts]
    last = parts[-1]
    if last.endswith("_embeddings"):
        parts.append("weight")
    else:
        parts[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(last, last)
    return ".".join(parts)


def bert_state_dict(bundle: TensorBundle, config) -> dict:
    """Read every encoder variable of the bundle into a BertModel state dict (torch tensors)."""
    import torch
    from transformers import BertModel

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in BertModel(config).state_dict().items()}
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in bundle:
        raise CheckpointError(f"{bundle.prefix} is a TF2 object-based checkpoint (tf.train.Checkpoint / Keras), "
                              "not Google's original BERT layout with bert/... variables")
    state = {}
    for name in bundle.names():
        key = hf_name(name)
        if key is None:
            continue
        if key not in expected:
            raise CheckpointError(f"variable {name!r} has no place in a BertModel with "
                                  f"{config.num_hidden_layers} layers (bert_config.json disagrees?)")
        # TF dense kernels are [in, out]; torch Linear weights are [out, in].
        kernel = name.endswith("/kernel")
        want = expected[key][::-1] if kernel else expected[key]
        if bundle.entries[name].shape != want:
            raise CheckpointError(f"variable {name!r} has shape {bundle.entries[name].shape}, bert_config.json "
                                  f"implies {want}")
        value = bundle.read(name)
        value = value.T if kernel else value
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {bundle.prefix} lacks {len(missing)} BERT variables, e.g. {missing[:3]}")
    return state


def infer_lower_case(folder: Path) -> bool:
    """Google names its cased models *cased*; chinese and uncased ones (and bert-as-service's default) lower-case."""
    name = folder.resolve().name.lower()
    return "uncased" in name or "cased" not in name


def convert_tf_checkpoint(folder: str | Path, out_folder: str | Path, do_lower_case: bool | None = None,
                          verify: bool = True) -> Path:
    """Write Google BERT folder `folder` as a transformers folder `out_folder` (created or overwritten)."""
    from safetensors.torch import save_file
    from transformers import BertTokenizerFast

    folder, out = Path(folder), Path(out_folder)
    if not folder.is_dir():
        raise MissingFile(f"checkpoint folder {folder} not found")
    config = read_bert_config(folder)
    vocab = folder / VOCAB_FILE
    if not vocab.is_file():
        raise MissingFile(f"{vocab} not found: a Google BERT folder needs {VOCAB_FILE}")
    n_vocab = sum(1 for _ in vocab.open(encoding="utf-8"))
    if n_vocab > config.vocab_size:
        raise CheckpointError(f"{vocab} has {n_vocab} entries, more than vocab_size {config.vocab_size}")
    raw_config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if do_lower_case is None:
        do_lower_case = bool(raw_config.get("do_lower_case", infer_lower_case(folder)))
    prefix = find_checkpoint_prefix(folder)
    state = bert_state_dict(TensorBundle(prefix, verify=verify), config)

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(vocab, out / VOCAB_FILE)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case, "tokenize_chinese_chars": True,
        "model_max_length": config.max_position_embeddings}, indent=2), encoding="utf-8")
    # Loading from the folder (not vocab_file=, which transformers 5 ignores) and saving adds tokenizer.json.
    BertTokenizerFast.from_pretrained(out).save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps({
        "version": CONVERSION_VERSION, "source": str(folder.resolve()), "checkpoint": prefix.name,
        "do_lower_case": do_lower_case}, indent=2), encoding="utf-8")
    return out


def _cache_key(folder: Path, do_lower_case: bool | None) -> str:
    h = hashlib.sha256(f"{CONVERSION_VERSION}|{folder.resolve()}|{do_lower_case}".encode())
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.name in (CONFIG_FILE, VOCAB_FILE, "checkpoint") or ".ckpt" in p.name):
            st = p.stat()
            h.update(f"|{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return cache_dir("tf-converted")


def ensure_converted(folder: str | Path, cache_dir: str | Path | None = None,
                     do_lower_case: bool | None = None) -> Path:
    """The HF folder converted from Google BERT folder `folder`, converting only if not cached yet."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"checkpoint folder {folder} not found")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{folder.resolve().name}-{_cache_key(folder, do_lower_case)}"
    if (target / SOURCE_FILE).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(".converting-*"):  # left by a conversion that was killed; one takes seconds
        if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache))
    try:
        convert_tf_checkpoint(folder, tmp, do_lower_case=do_lower_case)
        try:
            os.replace(tmp, target)  # atomic: a reader never sees a half-written folder
        except OSError:
            if not (target / SOURCE_FILE).is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tf_checkpoint(folder: str | Path, cache_dir: str | Path | None = None,
                       do_lower_case: bool | None = None):
    """(BertModel in eval mode, BertTokenizerFast) for a Google BERT folder, via the conversion cache."""
    from transformers import BertModel, BertTokenizerFast

    path = ensure_converted(folder, cache_dir, do_lower_case)
    return BertModel.from_pretrained(path).eval(), BertTokenizerFast.from_pretrained(path)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert-tf", help="convert a Google TensorFlow BERT folder into a transformers folder",
                              description="Convert a Google BERT folder (bert_config.json, vocab.txt, "
                                          "bert_model.ckpt.*) into a transformers folder, without TensorFlow.")
    p.add_argument("folder", help="Google BERT folder, e.g. chinese_L-12_H-768_A-12")
    p.add_argument("out", help="output folder (config.json, model.safetensors, tokenizer files)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--lower-case", dest="do_lower_case", action="store_true", default=None,
                      help="lower-case input (default: from the folder name; chinese/uncased models do)")
    case.add_argument("--no-lower-case", dest="do_lower_case", action="store_false")
    p.add_argument("--no-verify", action="store_true", help="skip the CRC-32C check of the tensor data")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    out = convert_tf_checkpoint(args.folder, args.out, do_lower_case=args.do_lower_case, verify=not args.no_verify)
    print(f"wrote {out}")
    return 0
