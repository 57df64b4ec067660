"""OpenVINO runtime on the cached ONNX export: fp32 (`openvino`), and int8 by NNCF (`openvino-int8`).

Measured against onnxruntime on the same export (2026-12-02, Xeon-flagged 2-core VM with AVX-512 BF16/VNNI and no
AMX, 1 thread, LOADED machine: CPU seconds, so only a rough ratio): 400 sentences 2.94 s vs 3.39 s, one sentence
8.2 ms vs 7.1 ms; its bf16 inference precision was slower (4.59 s) at cosine 0.99999. Quiet on an AMD EPYC VM
(no AMX) it encoded 4,000 sentences at 1.76x sentence-transformers against onnx's 1.53x, so `auto` times it as an
exact candidate where the package is installed (selection.py).

int8 (`openvino-int8`): NNCF's post-training quantization of that graph, static, calibrated on real sentences, with
its transformer preset (SmoothQuant on the activations), and the FFN output products kept in fp32 (the same
products quantize.py keeps: their GELU inputs have a tail one int8 scale cannot hold). Probe on all-MiniLM-L6-v2
(benchmarks/openvino_int8.py, quiet AMD EPYC VM, 2,000 sentences against torch fp32): every product in int8 is
2.66x onnx but fails the gate (top-10 overlap 0.945); with the FFN outputs in fp32 it passes (mean cosine 0.9988,
min 0.9958, overlap 0.958) at 2.09x onnx. The quantized graph is cached beside the export (built once per model,
outputs and recipe; tens of seconds); it is approximate, so `auto` checks it against the gate like bf16.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from bertserve.encode.backends import BackendUnavailable

# The CPU plugin keeps compiled kernels and buffers for each input shape it has seen, 5,000 shapes by default: 400
# random batch shapes grew a process from 193 to 1,097 MiB on int8 (928 MiB fp32). With 64 it stayed at 647 MiB
# at the same speed within noise; with 0 it ran 0.76x (benchmarks/openvino_settings.py, quiet AMD EPYC VM).
RUNTIME_CACHE_SHAPES = 64
INT8_RECIPE = "nncf-ptq-transformer-performance-ffn-out-fp32-v1"  # in the cache key: a new recipe rebuilds
INT8_CALIBRATION = (300, 150)  # English and (where the vocabulary covers it) Chinese sentences
INT8_CALIBRATION_BATCH = 8
INT8 = "openvino-int8"


class OpenVinoBackend:
    def __init__(self, model_path, hidden_indices: tuple[int, ...], need_pooler: bool, use_type_ids: bool,
                 threads: int, name: str = "openvino"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("backend 'openvino' needs the openvino package (pip install openvino)") from None
        self.hidden_indices, self.need_pooler, self.use_type_ids = hidden_indices, need_pooler, use_type_ids
        self.model_path, self.threads, self.name = model_path, threads, name  # ONNX export, or int8 IR
        self.use_model(ov.Core().read_model(str(model_path)))

    def use_model(self, model) -> None:
        """Compile and serve `model`: an openvino.Model with the export's inputs and outputs (e.g. a quantized one)."""
        import openvino as ov

        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": self.threads,
                                                               "PERFORMANCE_HINT": "LATENCY",
                                                               "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES})
        names = [f"hidden_{i}" for i in self.hidden_indices] + (["pooled"] if self.need_pooler else [])
        self._outputs = [self.compiled.output(n) for n in names]
        self._local = threading.local()  # an infer request serves one thread at a time

    def feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> dict:
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if self.use_type_ids:
            feed["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                      else torch.zeros_like(input_ids)).numpy()
        return feed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(self.feed(input_ids, attention_mask, token_type_ids))
        values = [torch.from_numpy(np.array(result[o])) for o in self._outputs]
        hidden = dict(zip(self.hidden_indices, values))
        return hidden, values[-1] if self.need_pooler else None


def openvino_backend(checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads=None) -> OpenVinoBackend:
    from bertserve.encode.backends.onnx_backend import onnx_backend, session_threads
    exported = onnx_backend("onnx", checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads)
    return OpenVinoBackend(exported.path, hidden_indices, need_pooler, use_type_ids, session_threads(num_threads))


def _quantize_int8(fp32: OpenVinoBackend, checkpoint, out_xml) -> None:
    """NNCF int8 of `fp32`'s graph, calibrated on the covered sample, saved as OpenVINO IR at `out_xml`. NNCF runs
    in a process of its own: its statistics passes and progress bars stay out of the server (memory, stdout)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from bertserve.encode.backends.sample import covered_sample, padded_batches
    from bertserve.encode.backends.selection import SAMPLE_MAX_LEN
    from bertserve.models.tokenizer import TextTokenizer

    # calibrated on texts as long as those the gate checks (auto sends longer ones to an exact backend)
    tokenizer = TextTokenizer(checkpoint.tokenizer, min(SAMPLE_MAX_LEN, checkpoint.model_max_len))
    texts = covered_sample(tokenizer, checkpoint.prompts, *INT8_CALIBRATION)
    feeds = [fp32.feed(*batch) for batch in padded_batches(tokenizer, texts, INT8_CALIBRATION_BATCH)]
    with tempfile.TemporaryDirectory(prefix="bertserve-int8-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **{f"{i}_{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
        done = subprocess.run([sys.executable, "-m", __name__, str(fp32.model_path), str(out_xml), str(feeds_path),
                               str(len(feeds))], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not Path(out_xml).is_file():
        raise RuntimeError(f"NNCF int8 quantization of {fp32.model_path} failed: {done.stderr.strip()[-2000:]}")


def _quantize_main(onnx_path: str, out_xml: str, feeds_path: str, count: str) -> None:
    import logging

    import nncf
    import openvino as ov

    from bertserve.encode.backends.quantize import sensitive_nodes

    data = np.load(feeds_path)
    names = sorted({key.split("_", 1)[1] for key in data.files})
    feeds = [{name: data[f"{i}_{name}"] for name in names} for i in range(int(count))]
    model = ov.Core().read_model(onnx_path)
    keep_fp32 = sensitive_nodes([op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"])
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(feeds),
                              ignored_scope=nncf.IgnoredScope(names=keep_fp32) if keep_fp32 else None)
    ov.save_model(quantized, out_xml, compress_to_fp16=False)


def openvino_int8_backend(checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads=None) -> OpenVinoBackend:
    """The cached int8 graph for this model and these outputs, quantized (once) on demand."""
    import importlib.metadata
    import os

    from bertserve.encode.backends import export_cache
    from bertserve.encode.backends.onnx_backend import probe_ok, session_threads
    from bertserve.encode.backends.torch_backend import TorchBackend

    try:  # nncf itself is imported only by the quantizing process (memory, import time)
        versions = {p: importlib.metadata.version(p) for p in ("openvino", "nncf")}
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailable("backend 'openvino-int8' needs the openvino and nncf packages "
                                 "(pip install openvino nncf)") from None
    threads = session_threads(num_threads)
    name, described = export_cache.entry_key(
        INT8, model=export_cache.checkpoint_content_hash(checkpoint), hidden_indices=list(hidden_indices),
        pooler=need_pooler, type_ids=use_type_ids, recipe=INT8_RECIPE, calibration=list(INT8_CALIBRATION),
        versions=versions)
    folder = export_cache.entry_dir(name)
    xml, meta_path = folder / "model.xml", folder / "meta.json"
    reference = TorchBackend(checkpoint.model, checkpoint.num_layers, hidden_indices, need_pooler)
    meta = export_cache.read_json(meta_path)
    if meta is not None and meta.get("entry") == described and meta.get("bytes") == _ir_bytes(xml):
        try:
            backend = OpenVinoBackend(xml, hidden_indices, need_pooler, use_type_ids, threads, INT8)
        except Exception:  # OpenVINO refuses a damaged file with a variety of exception types
            backend = None
        if backend is not None and probe_ok(backend, reference, checkpoint.tokenizer):
            return backend  # no fp32 graph was compiled: a server on int8 never holds one
    # Missing, stale or damaged: quantize again. meta.json is written last, so it marks a complete entry.
    fp32 = openvino_backend(checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    tmp = folder / f".model.{os.getpid()}.xml"
    try:
        _quantize_int8(fp32, checkpoint, tmp)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    finally:
        for leftover in folder.glob(f".model.{os.getpid()}.*"):
            leftover.unlink()
    del fp32
    backend = OpenVinoBackend(xml, hidden_indices, need_pooler, use_type_ids, threads, INT8)
    if not probe_ok(backend, reference, checkpoint.tokenizer):
        raise RuntimeError(f"the fresh int8 graph of {checkpoint.path} is too far from the torch model on a probe "
                           f"sentence; not using it (left in {folder} for inspection)")
    export_cache.write_json(meta_path, {"entry": described, "bytes": _ir_bytes(xml)})
    return backend


def _ir_bytes(xml) -> list[int] | None:
    """Sizes of an OpenVINO IR's two files (None when either is missing): a cheap check for truncation."""
    files = (xml, xml.with_suffix(".bin"))
    return [f.stat().st_size for f in files] if all(f.is_file() for f in files) else None


if __name__ == "__main__":
    import sys

    _quantize_main(*sys.argv[1:])
