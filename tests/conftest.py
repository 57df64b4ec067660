"""Shared fixtures: the bundled default model, and tiny real models the tests build and save themselves."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `bertserve` command sets it; before torch loads


def package_file(package: str, suffix: str) -> Path:
    """A file shipped inside an installed package (data packages are read by path, never imported)."""
    for f in importlib.metadata.files(package) or []:
        if str(f).replace("\\", "/").endswith(suffix) and not str(f).startswith(".."):
            return Path(f.locate())
    raise FileNotFoundError(f"{suffix} not found in package {package}; run scripts/setup.sh")


@pytest.fixture(scope="session", autouse=True)
def bertserve_cache(tmp_path_factory) -> Path:
    """A fresh export/decision cache per test session (CI starts cold), shared by its tests (so they stay fast),
    and the exact torch backend as the session's default."""
    folder = tmp_path_factory.mktemp("bertserve_cache")
    os.environ["BERTSERVE_CACHE"] = str(folder)  # subprocesses (CLI tests, servers) inherit it
    # Most tests compare values with transformers at 1e-5, tighter than the quality gate `auto` applies, and a
    # server test must not spend its start-up measuring backends: the session default is the exact reference.
    # tests/test_backends.py asks for every other backend, `auto` included, by name.
    os.environ["BERTSERVE_BACKEND"] = "torch"
    return folder


def exact_encoder(*args, **options):
    """An Encoder on the exact torch backend. Tests that compare values with transformers or sentence-transformers
    at 1e-4..1e-6 use it: that is tighter than the quality gate `auto` applies when it picks a fast backend
    (tests/test_backends.py holds every backend to torch at the gate's and the exact paths' tolerances)."""
    from bertserve import Encoder
    return Encoder(*args, backend="torch", **options)


@pytest.fixture(scope="session")
def default_encoder():
    return exact_encoder()


@pytest.fixture(scope="session")
def chinese_vocab() -> Path:
    return package_file("cn-clip", "cn_clip/clip/vocab.txt")


def save_tiny_bert(folder: Path, vocab: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0,
                   model_type: str = "bert") -> Path:
    """A small BERT-shaped model with random weights and a real WordPiece vocabulary, as an HF folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast, DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(vocab, folder / "vocab.txt")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    vocab_size = tokenizer.vocab_size
    if model_type == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=2,
                                                 hidden_dim=hidden * 2, max_position_embeddings=128))
    else:
        model = BertModel(BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=128))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_chinese_bert(tmp_path_factory, chinese_vocab) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_zh") / "model", chinese_vocab)
