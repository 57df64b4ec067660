"""onnxruntime backends: the model exported to ONNX (fp32), optionally quantized to int8.

The export exposes exactly the hidden states the chosen layers need (and the pooler output for CLS_POOLED),
stopping after the deepest layer used, so no work is spent on layers nobody reads.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from bertserve.encode.backends.torch_backend import truncated


def output_names(hidden_indices: tuple[int, ...], need_pooler: bool) -> list[str]:
    return [f"hidden_{i}" for i in hidden_indices] + (["pooled"] if need_pooler else [])


class _ExportView(torch.nn.Module):
    """The model as a function of plain tensors returning the wanted outputs as a tuple (what the tracer needs)."""

    def __init__(self, model, hidden_indices, need_pooler, use_type_ids):
        super().__init__()
        self.model, self.hidden_indices, self.need_pooler, self.use_type_ids = model, hidden_indices, need_pooler, use_type_ids

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, output_hidden_states=True, return_dict=True)
        outputs = tuple(out.hidden_states[i] for i in self.hidden_indices)
        return outputs + ((out.pooler_output,) if self.need_pooler else ())


def export_onnx(model, num_layers: int, hidden_indices: tuple[int, ...], need_pooler: bool, use_type_ids: bool,
                path: Path) -> None:
    depth = num_layers if need_pooler else max(max(hidden_indices), 1)
    view = _ExportView(truncated(model, depth), hidden_indices, need_pooler, use_type_ids).eval()
    # Two rows of different lengths so the tracer sees padding; ids 1..n avoid special-token-only shortcuts.
    ids = torch.arange(1, 9).reshape(1, 8).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_type_ids else [])
    outputs = output_names(hidden_indices, need_pooler)
    axes = {name: {0: "batch", 1: "length"} for name in inputs + outputs}
    if need_pooler:
        axes["pooled"] = {0: "batch"}
    args = (ids, mask, torch.zeros_like(ids)) if use_type_ids else (ids, mask)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow are about shapes we keep dynamic
        torch.onnx.export(view, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)


# onnxruntime's CPU arena keeps the peak of every batch for the session's life: after one 32 x 512-token batch
# that is ~1 GB more RSS (measured: +844 MiB for six 16 x 440-512 batches of all-MiniLM-L6-v2, +44 MiB with
# shrinkage, CPU time within noise). Batches above this many tokens hand the arena's free blocks back after the
# run; smaller ones (every server batch, short bulk batches) keep them, where reuse saves page faults.
ARENA_SHRINK_TOKENS = 8192


def session_threads(num_threads: int | None) -> int:
    if num_threads:
        return int(num_threads)
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))))


def open_session(path: Path, num_threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = session_threads(num_threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """Runs an exported graph with onnxruntime; outputs come back as torch tensors for the shared pooling code."""

    def __init__(self, name: str, path: Path, hidden_indices: tuple[int, ...], need_pooler: bool,
                 use_type_ids: bool, num_threads: int | None = None):
        self.name = name
        self.path = path
        self.hidden_indices = hidden_indices
        self.need_pooler = need_pooler
        self.use_type_ids = use_type_ids
        self.session = open_session(path, num_threads)
        self._outputs = output_names(hidden_indices, need_pooler)
        import onnxruntime as ort
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if self.use_type_ids:
            feed["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                      else torch.zeros_like(input_ids)).numpy()
        values = self.session.run(self._outputs, feed,
                                  self._shrink if input_ids.numel() > ARENA_SHRINK_TOKENS else None)
        hidden = {i: torch.from_numpy(np.asarray(v)) for i, v in zip(self.hidden_indices, values)}
        pooled = torch.from_numpy(np.asarray(values[-1])) if self.need_pooler else None
        return hidden, pooled


PROBE_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
PROBE_MIN_COSINE = {"onnx": 0.99999, "onnx-int8": 0.95, "openvino-int8": 0.95}  # per token, against torch fp32


def _probe_inputs(tokenizer):
    enc = tokenizer([PROBE_TEXT, PROBE_TEXT[:20]], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")


def probe_ok(backend, reference, tokenizer) -> bool:
    """Does the graph on disk compute what the model computes? Catches damaged or mismatched files."""
    ids, mask, types = _probe_inputs(tokenizer)
    try:
        got, got_pooled = backend.forward(ids, mask, types)
    except Exception:
        return False
    want, want_pooled = reference.forward(ids, mask, types)
    floor = PROBE_MIN_COSINE[backend.name]
    pairs = [(got[i][mask.bool()], want[i][mask.bool()]) for i in backend.hidden_indices]
    if backend.need_pooler:
        pairs.append((got_pooled, want_pooled))
    for a, b in pairs:
        if a.shape != b.shape or not torch.isfinite(a).all():
            return False
        if torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).min().item() < floor:
            return False
    return True


def onnx_backend(variant: str, checkpoint, hidden_indices: tuple[int, ...], need_pooler: bool, use_type_ids: bool,
                 num_threads: int | None = None) -> OnnxBackend:
    """The cached export for this model and these outputs, built (or rebuilt when stale or damaged) on demand."""
    from bertserve.encode.backends import export_cache
    from bertserve.encode.backends.quantize import RECIPE, quantize_int8
    from bertserve.encode.backends.torch_backend import TorchBackend

    name, described = export_cache.entry_key(
        "onnx", model=export_cache.checkpoint_content_hash(checkpoint), hidden_indices=list(hidden_indices),
        pooler=need_pooler, type_ids=use_type_ids, variant=variant,
        quantization=RECIPE if variant == "onnx-int8" else None)
    folder = export_cache.entry_dir(name)
    path, meta_path = folder / "model.onnx", folder / "meta.json"
    reference = TorchBackend(checkpoint.model, checkpoint.num_layers, hidden_indices, need_pooler)
    meta = export_cache.read_json(meta_path)
    if meta is not None and meta.get("entry") == described and path.is_file() and path.stat().st_size == meta.get("bytes"):
        try:
            backend = OnnxBackend(variant, path, hidden_indices, need_pooler, use_type_ids, num_threads)
        except Exception:  # onnxruntime refuses a damaged file with a variety of exception types
            backend = None
        if backend is not None and probe_ok(backend, reference, checkpoint.tokenizer):
            return backend
    # Missing, stale or damaged: rebuild from scratch. meta.json is written last, so its presence marks a
    # complete entry.
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    tmp = folder / f".model.{os.getpid()}.onnx"
    try:
        export_onnx(checkpoint.model, checkpoint.num_layers, hidden_indices, need_pooler, use_type_ids, tmp)
        if variant == "onnx-int8":
            fp32_tmp, tmp = tmp, folder / f".model.{os.getpid()}.int8.onnx"
            quantize_int8(fp32_tmp, tmp)
            fp32_tmp.unlink()
        os.replace(tmp, path)
    finally:
        for leftover in folder.glob(f".model.{os.getpid()}.*"):
            leftover.unlink()
    backend = OnnxBackend(variant, path, hidden_indices, need_pooler, use_type_ids, num_threads)
    if not probe_ok(backend, reference, checkpoint.tokenizer):
        raise RuntimeError(f"the fresh {variant} export of {checkpoint.path} does not reproduce the torch model "
                           f"on a probe sentence; not using it (left in {folder} for inspection)")
    export_cache.write_json(meta_path, {"entry": described, "bytes": path.stat().st_size})
    return backend

