"""Regenerate the TensorFlow-written fixtures under tests/data/tf_bert_tiny/ (NOT run in CI).

Needs TensorFlow, which the project does not depend on: install it into a throwaway virtual
environment outside the repository and pass its interpreter, e.g.

    python3.11 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    PYTHONPATH=$PWD .venv/bin/python tests/data/make_tf_bert_tiny.py --tf-python /tmp/tfvenv/bin/python

The script runs twice: once in the project's environment (torch + transformers) to build a tiny random
BERT and save it as a Hugging Face folder, and once, as a subprocess, in the TensorFlow environment to
write the very same weights the way Google's BERT release did: TF1 variables under their Google names
saved by `tf.compat.v1.train.Saver` (V2 tensor-bundle format). It also writes a second, sharded bundle
of assorted dtypes with `SaveV2` + `MergeV2Checkpoints` (what a sharded Saver does), with the expected
values beside it, so the reader is checked against files TensorFlow itself wrote.

Output (all small, committed):
    tf_bert_tiny/chinese_L-2_H-32_A-2/  bert_config.json, vocab.txt, bert_model.ckpt.{index,data-*}, checkpoint
    tf_bert_tiny/hf/                    the same weights as a transformers BertForPreTraining folder
    tf_bert_tiny/sharded/               mixed.{index,data-00000-of-00002,data-00001-of-00002}, expected.npz,
                                        tf2_object.{index,data-00000-of-00001} (a Keras layer via tf.train.Checkpoint)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "tf_bert_tiny"
GOOGLE = HERE / "chinese_L-2_H-32_A-2"
HF = HERE / "hf"
SHARDED = HERE / "sharded"

# Chinese characters, English pieces and WordPiece continuations, as a real Chinese vocab mixes them.
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + list("，。！？,.!?0123456789")
         + list("abcdefghijklmnopqrstuvwxyz")
         + ["the", "is", "hello", "world", "##s", "##ing", "##ed", "good"]
         + list("我爱北京天安门你好中国人的是不在有这个们大学生今年很高兴认识文字语言模型"))

GOOGLE_CONFIG = {
    "attention_probs_dropout_prob": 0.1, "directionality": "bidi", "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 40,
    "max_position_embeddings": 40, "num_attention_heads": 2, "num_hidden_layers": 2,
    "pooler_fc_size": 32, "pooler_num_attention_heads": 2, "pooler_num_fc_layers": 3,
    "pooler_size_per_head": 16, "pooler_type": "first_token_transform", "type_vocab_size": 2,
    "vocab_size": len(VOCAB),
}


def google_names(state: dict) -> dict:
    """HF BertForPreTraining state dict -> {Google variable name: numpy array} (kernels as [in, out])."""
    out = {}
    for name, tensor in state.items():
        value = tensor.detach().numpy().copy()
        g = name
        if g.endswith("position_ids") or g.startswith("cls.predictions.decoder."):
            continue  # a buffer; the decoder is tied to the word embeddings and cls.predictions.bias
        g = g.replace("bert.encoder.layer.", "bert.encoder.layer_")
        g = g.replace("cls.predictions.bias", "cls.predictions.output_bias")
        g = g.replace("cls.seq_relationship.weight", "cls.seq_relationship.output_weights")
        g = g.replace("cls.seq_relationship.bias", "cls.seq_relationship.output_bias")
        g = g.replace(".", "/")
        if "LayerNorm" in g:
            g = g.replace("/weight", "/gamma").replace("/bias", "/beta")
        elif g.endswith("_embeddings/weight"):
            g = g[: -len("/weight")]
        elif g.endswith("/weight"):
            g = g[: -len("/weight")] + "/kernel"
            value = value.T.copy()
        out[g] = value
    return out


def build_hf(npz_path: Path) -> None:
    import numpy as np
    import torch
    from transformers import BertConfig, BertForPreTraining, BertTokenizerFast

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=40, max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu")
    model = BertForPreTraining(cfg).eval()
    # Random values everywhere (LayerNorm gamma/beta too), so a swapped or untransposed weight shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.2)
    shutil.rmtree(HF, ignore_errors=True)
    HF.mkdir(parents=True)
    model.save_pretrained(HF)
    (HF / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (HF / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    BertTokenizerFast.from_pretrained(HF).save_pretrained(HF)
    weights = google_names(model.state_dict())
    weights["global_step"] = np.array(1000, dtype=np.int64)
    np.savez(npz_path, **weights)


def write_tf(npz_path: Path, google_dir: Path, sharded_dir: Path) -> None:
    """Runs inside the TensorFlow environment."""
    import numpy as np
    import tensorflow as tf

    weights = dict(np.load(npz_path))
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(v, name=k) for k, v in sorted(weights.items())]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(google_dir / "bert_model.ckpt"), write_meta_graph=False)

    rng = np.random.default_rng(0)
    expected = {
        "a/float32": rng.normal(size=(3, 5)).astype(np.float32),
        "a/float64": rng.normal(size=(4,)),
        "a/float16": rng.normal(size=(2, 3)).astype(np.float16),
        "a/int32": rng.integers(-1000, 1000, size=(7,)).astype(np.int32),
        "b/int64_scalar": np.array(-123456789012, dtype=np.int64),
        "b/int8": rng.integers(-128, 127, size=(2, 2, 2)).astype(np.int8),
        "b/uint8": rng.integers(0, 255, size=(5,)).astype(np.uint8),
        "b/bool": np.array([True, False, True]),
        "b/empty": np.zeros((0, 3), dtype=np.float32),
        "b/bfloat16": np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32),  # exact in bfloat16
    }
    tensors = {k: tf.constant(v) for k, v in expected.items()}
    tensors["b/bfloat16"] = tf.cast(tensors["b/bfloat16"], tf.bfloat16)
    tensors["b/string"] = tf.constant([b"abc", b""])
    tmp = Path(tempfile.mkdtemp())
    parts = []
    for i, group in enumerate(("a/", "b/")):
        names = sorted(k for k in tensors if k.startswith(group))
        prefix = str(tmp / f"part{i}")
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tensors[n] for n in names])
        parts.append(prefix)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=str(sharded_dir / "mixed"))
    np.savez(sharded_dir / "expected.npz", **{k.replace("/", "__"): v for k, v in expected.items()})
    shutil.rmtree(tmp, ignore_errors=True)  # MergeV2Checkpoints already removed the parts

    # A TF2 object-based checkpoint (what Keras and tf.train.Checkpoint write): not Google's BERT layout.
    layer = tf.keras.layers.Dense(2)
    layer.build((None, 3))
    tf.train.Checkpoint(dense=layer).write(str(sharded_dir / "tf2_object"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf-python", help="python interpreter that has tensorflow installed")
    ap.add_argument("--write-tf", nargs=3, metavar=("NPZ", "GOOGLE_DIR", "SHARDED_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_tf:
        write_tf(*(Path(p) for p in args.write_tf))
        return
    if not args.tf_python:
        ap.error("--tf-python is required (an interpreter with tensorflow installed)")
    for d in (GOOGLE, SHARDED):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "weights.npz"
        build_hf(npz)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        subprocess.run([args.tf_python, __file__, "--write-tf", str(npz), str(GOOGLE), str(SHARDED)],
                       check=True, env=env)
    (GOOGLE / "bert_config.json").write_text(json.dumps(GOOGLE_CONFIG, indent=2) + "\n", encoding="utf-8")
    (GOOGLE / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # The Saver writes absolute paths here; Google's release ships relative ones.
    (GOOGLE / "checkpoint").write_text('model_checkpoint_path: "bert_model.ckpt"\n'
                                       'all_model_checkpoint_paths: "bert_model.ckpt"\n', encoding="utf-8")
    total = sum(f.stat().st_size for f in HERE.rglob("*") if f.is_file())
    print(f"wrote {HERE} ({total / 1024:.0f} kB)", file=sys.stderr)


if __name__ == "__main__":
    main()
