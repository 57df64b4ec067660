"""Light imports: the HTTP client and `import bertserve` load neither torch nor faiss; heavy names load on
first use. Each check runs in a fresh interpreter, where sys.modules shows what an import really pulled in."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "faiss", "transformers", "onnxruntime", "sklearn")


def _loaded_after(code: str, **extra_env) -> dict:
    """Run `code` in a fresh interpreter (this checkout first on the path, no OMP_WAIT_POLICY unless given) and
    report which heavy modules it loaded, the environment's OMP_WAIT_POLICY and whatever `code` left in `out`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | extra_env
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    probe = (f"import json, os, sys\nout = None\n{code}\n"
             f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
             f"'omp': os.environ.get('OMP_WAIT_POLICY'), 'out': out}}))")
    done = subprocess.run([sys.executable, "-c", probe], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_client_import_loads_neither_torch_nor_faiss():
    got = _loaded_after("import bertserve.client\nout = bertserve.client.Client.__name__")
    assert got == {"heavy": [], "omp": None, "out": "Client"}


def test_package_import_is_light_has_the_metadata_version_and_leaves_the_environment_alone():
    got = _loaded_after("import bertserve\nout = [bertserve.__version__, sorted(bertserve.__all__)]")
    assert got["heavy"] == [] and got["omp"] is None  # no OpenMP variable set behind the user's back
    assert got["out"][0] == importlib.metadata.version("bertserve")
    assert {"Encoder", "Collection", "Client"} <= set(got["out"][1])


def test_heavy_names_load_on_first_use():
    import bertserve
    from bertserve.encode import Encoder
    from bertserve.search import Collection

    assert bertserve.Encoder is Encoder and bertserve.Collection is Collection
    assert "Encoder" in dir(bertserve)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        bertserve.Nope  # noqa: B018


def test_the_command_prefers_passive_openmp_and_keeps_a_users_choice():
    set_it = "from bertserve.settings import prefer_passive_openmp\nprefer_passive_openmp()"
    assert _loaded_after(set_it)["omp"] == "PASSIVE"
    assert _loaded_after(set_it, OMP_WAIT_POLICY="ACTIVE")["omp"] == "ACTIVE"


def test_encode_package_is_light_until_the_encoder_is_asked_for():
    light = _loaded_after("import bertserve.encode, bertserve.encode.cli\nout = sorted(bertserve.encode.__all__)")
    assert light["heavy"] == [] and light["out"] == ["Encoder", "EncoderConfig", "POOLING_STRATEGIES"]
    heavy = _loaded_after("from bertserve.encode import Encoder, POOLING_STRATEGIES\nout = Encoder.__name__")
    assert heavy["out"] == "Encoder" and "torch" in heavy["heavy"]


def test_the_command_line_parser_loads_no_model_code():
    # `bertserve --help` and every subcommand's --help build this parser: a second of torch import each time
    got = _loaded_after("from bertserve.cli import build_parser\nparser = build_parser()\n"
                        "out = sorted(parser._subparsers._group_actions[0].choices)")
    assert [m for m in got["heavy"] if m != "faiss"] == []
    assert {"encode", "serve", "distill", "finetune", "train-lm", "ner", "trim-vocab"} <= set(got["out"])
