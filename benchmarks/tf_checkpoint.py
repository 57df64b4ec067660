"""Reading a full-size Google BERT checkpoint: bertserve's numpy reader against TensorFlow's own reader.

Needs TensorFlow, which the project does not depend on, so it runs in a throwaway environment that has
tensorflow-cpu and numpy (bertserve's reader needs nothing else), in three steps:

    /tmp/tfvenv/bin/python benchmarks/tf_checkpoint.py write /tmp/chinese_L-12_H-768_A-12 --vocab VOCAB.txt
    /tmp/tfvenv/bin/python benchmarks/tf_checkpoint.py read /tmp/chinese_L-12_H-768_A-12
    .venv/bin/python benchmarks/tf_checkpoint.py load /tmp/chinese_L-12_H-768_A-12

`write` saves random weights of bert-base-chinese's shapes under Google's names with TensorFlow (SaveV2,
the op tf.compat.v1.train.Saver runs). `read` reads every tensor into numpy with each contender, rounds
interleaved. `load` (project environment, no TensorFlow) compares the first bertserve load, which converts
into a fresh cache, with a later load from the cache. Each round records the CPU time other processes used
(/proc/stat minus this process), so a disturbed round can be recognised.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"attention_probs_dropout_prob": 0.1, "directionality": "bidi", "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
          "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
          "type_vocab_size": 2, "vocab_size": 21128}


def rounds(contenders: dict, n: int) -> dict:
    """Run each contender once per round, interleaved; round 0 warms the page cache and is dropped."""
    import_reader()  # makes bertserve importable beside TensorFlow, without torch
    from bertserve.machine_load import timed

    results = {name: [] for name in contenders}
    for r in range(n + 1):
        for name, fn in contenders.items():
            sample = timed(fn)
            wall, other = sample.wall, sample.others_cpu
            if r:
                results[name].append((wall, other))
            print(f"round {r} {name:28s} {wall:7.3f} s   other processes {other:6.2f} CPU-s", file=sys.stderr)
    return results


def report(results: dict, baseline: str, title: str) -> str:
    base = statistics.median(w for w, _ in results[baseline])
    lines = [f"### {title}", "", "| contender | median s | min s | ratio to " + baseline + " (median) | "
             "other-process CPU-s per round (max) |", "|---|---|---|---|---|"]
    for name, rs in results.items():
        walls = [w for w, _ in rs]
        med = statistics.median(walls)
        lines.append(f"| {name} | {med:.3f} | {min(walls):.3f} | {med / base:.2f} | {max(o for _, o in rs):.2f} |")
    return "\n".join(lines)


def import_reader():
    """bertserve's reader without importing bertserve/__init__ (which needs torch, absent beside TF)."""
    pkg = types.ModuleType("bertserve")
    pkg.__path__ = [str(ROOT / "bertserve")]
    sys.modules.setdefault("bertserve", pkg)
    from bertserve.models.tf_checkpoint import TensorBundle
    return TensorBundle


def cmd_write(args) -> None:
    import numpy as np
    import tensorflow as tf

    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    h, inter, rng = CONFIG["hidden_size"], CONFIG["intermediate_size"], np.random.default_rng(0)
    shapes = {"bert/embeddings/word_embeddings": (CONFIG["vocab_size"], h),
              "bert/embeddings/position_embeddings": (512, h), "bert/embeddings/token_type_embeddings": (2, h),
              "bert/embeddings/LayerNorm/gamma": (h,), "bert/embeddings/LayerNorm/beta": (h,),
              "bert/pooler/dense/kernel": (h, h), "bert/pooler/dense/bias": (h,)}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"
        for sub, (n_in, n_out) in {"attention/self/query": (h, h), "attention/self/key": (h, h),
                                   "attention/self/value": (h, h), "attention/output/dense": (h, h),
                                   "intermediate/dense": (h, inter), "output/dense": (inter, h)}.items():
            shapes[p + sub + "/kernel"], shapes[p + sub + "/bias"] = (n_in, n_out), (n_out,)
        for ln in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[p + ln + "/gamma"], shapes[p + ln + "/beta"] = (h,), (h,)
    names = sorted(shapes)
    tensors = [tf.constant(rng.standard_normal(shapes[n], dtype=np.float32) * 0.02) for n in names]
    tf.raw_ops.SaveV2(prefix=str(out / "bert_model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=tensors)
    (out / "bert_config.json").write_text(json.dumps(CONFIG, indent=2))
    shutil.copyfile(args.vocab, out / "vocab.txt")
    print(f"wrote {out}: {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.0f} MB", file=sys.stderr)


def cmd_read(args) -> None:
    import tensorflow as tf

    TensorBundle = import_reader()
    prefix = str(Path(args.folder) / "bert_model.ckpt")

    def tf_reader():
        reader = tf.train.load_checkpoint(prefix)
        return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}

    def ours(verify):
        bundle = TensorBundle(prefix, verify=verify)
        return {n: bundle.read(n) for n in bundle.names()}

    a, b = tf_reader(), ours(True)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "readers disagree"
    results = rounds({"tensorflow CheckpointReader": tf_reader, "bertserve, CRC-32C checked": lambda: ours(True),
                      "bertserve, unchecked": lambda: ours(False)}, args.rounds)
    emit(args, report(results, "tensorflow CheckpointReader",
                      f"Read all {len(a)} tensors ({sum(v.nbytes for v in a.values()) / 1e6:.0f} MB) into numpy, "
                      f"tensorflow {tf.__version__}"))


def cmd_load(args) -> None:
    import torch
    from bertserve.models.google_bert import load_tf_checkpoint

    torch.set_num_threads(2)
    cache = Path(tempfile.mkdtemp(prefix="tfbench-"))
    load_tf_checkpoint(args.folder, cache_dir=cache / "warm")

    def first_load():
        fresh = Path(tempfile.mkdtemp(dir=cache))
        load_tf_checkpoint(args.folder, cache_dir=fresh)
        shutil.rmtree(fresh)

    results = rounds({"cached load": lambda: load_tf_checkpoint(args.folder, cache_dir=cache / "warm"),
                      "first load (convert + load)": first_load}, args.rounds)
    shutil.rmtree(cache)
    emit(args, report(results, "cached load", "Encoder-ready BertModel + tokenizer from a Google folder"))


def emit(args, table: str) -> None:
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(f"{table}\n\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("write", "read", "load"))
    ap.add_argument("folder")
    ap.add_argument("--vocab", help="vocab.txt to ship with the written checkpoint (write)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", help="append the result table to this markdown file")
    args = ap.parse_args()
    {"write": cmd_write, "read": cmd_read, "load": cmd_load}[args.command](args)


if __name__ == "__main__":
    main()
