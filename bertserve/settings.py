"""The one place bertserve reads environment variables and decides where its caches live.

Every module asks here instead of reading `os.environ` itself, so each variable has one meaning and one
default. Nothing heavy is imported: the client and `--help` load this too.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BERTSERVE_CACHE"          # root of every cache (exports, converted checkpoints, rebuilt models)
BACKEND_ENV = "BERTSERVE_BACKEND"      # default Encoder backend when none is given (tests pin "torch")
API_KEY_ENV = "BERTSERVE_API_KEY"      # `bertserve serve`'s API key when --api-key is not given


def cache_dir(*parts: str) -> Path:
    """$BERTSERVE_CACHE, else $XDG_CACHE_HOME/bertserve, else ~/.cache/bertserve; `parts` name a subfolder.

    Read on every call, so a test or a user who sets the variable later is honoured."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bertserve"
    return base.joinpath(*parts)


def prefer_passive_openmp() -> None:
    """Let OpenMP threads sleep, not spin, while they wait for each other, unless the environment says otherwise.

    On a machine shared with other work a spinning thread that is descheduled stalls the rest (one sentence took
    100-1300 ms instead of 15 ms on a busy 2-core box); sleeping waits cost nothing measurable otherwise.
    OpenMP reads the variable when torch loads, so the `bertserve` command calls this before it imports any
    model code; a Python program that wants the same sets OMP_WAIT_POLICY=PASSIVE before importing torch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_backend() -> str:
    return os.environ.get(BACKEND_ENV) or "auto"


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV) or None
