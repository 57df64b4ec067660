"""The `bertserve encode` and `bertserve info` commands, run as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def bertserve(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertserve.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_encode_jsonl_npy_and_stdin(tmp_path, default_encoder):
    out = bertserve("encode", "hello world", "a ||| b", "--show-tokens", "--backend", "torch")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and rows[1]["tokens"] == ["[CLS]", "a", "[SEP]", "b", "[SEP]"]
    expected = default_encoder.encode(["hello world", "a ||| b"])
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), expected, atol=1e-6)

    target = tmp_path / "v.npy"
    out = bertserve("encode", "--input", "-", "--output", str(target), "--layers=-2", "--no-normalize", "--backend", "torch",
                    stdin="first line\n\nsecond line\n")
    assert out.returncode == 0, out.stderr
    assert np.load(target).shape == (2, 384)  # the blank line is skipped


def test_errors_are_one_clear_line(tmp_path):
    out = bertserve("encode", "x", "--layers=-9")
    assert out.returncode == 2 and "6 layers" in out.stderr and "Traceback" not in out.stderr
    out = bertserve("info", "--model", str(tmp_path))
    assert out.returncode == 2 and "config.json" in out.stderr


def test_info_prints_the_model_facts():
    out = bertserve("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["layers"] == 6 and info["hidden_size"] == 384 and info["has_pooler"] is True
