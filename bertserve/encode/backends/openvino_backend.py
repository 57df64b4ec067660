"""OpenVINO runtime on the cached ONNX export (fp32; `openvino` is an optional package).

Measured against onnxruntime on the same export (2026-12-02, Xeon-flagged 2-core VM with AVX-512 BF16/VNNI and no
AMX, 1 thread, LOADED machine: CPU seconds, so only a rough ratio): 400 sentences 2.94 s vs 3.39 s, one sentence
8.2 ms vs 7.1 ms; its bf16 inference precision was slower (4.59 s) at cosine 0.99999. Quiet on an AMD EPYC VM
(no AMX) it encoded 4,000 sentences at 1.76x sentence-transformers against onnx's 1.53x, so `auto` times it as an
exact candidate where the package is installed (selection.py).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from bertserve.encode.backends import BackendUnavailable


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, onnx_path, hidden_indices: tuple[int, ...], need_pooler: bool, use_type_ids: bool,
                 threads: int):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("backend 'openvino' needs the openvino package (pip install openvino)") from None
        self.hidden_indices, self.need_pooler, self.use_type_ids = hidden_indices, need_pooler, use_type_ids
        self.onnx_path, self.threads = onnx_path, threads
        self.use_model(ov.Core().read_model(str(onnx_path)))

    def use_model(self, model) -> None:
        """Compile and serve `model`: an openvino.Model with the export's inputs and outputs (e.g. a quantized one)."""
        import openvino as ov

        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": self.threads,
                                                               "PERFORMANCE_HINT": "LATENCY"})
        names = [f"hidden_{i}" for i in self.hidden_indices] + (["pooled"] if self.need_pooler else [])
        self._outputs = [self.compiled.output(n) for n in names]
        self._local = threading.local()  # an infer request serves one thread at a time

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if self.use_type_ids:
            feed["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                      else torch.zeros_like(input_ids)).numpy()
        result = request.infer(feed)
        values = [torch.from_numpy(np.array(result[o])) for o in self._outputs]
        hidden = dict(zip(self.hidden_indices, values))
        return hidden, values[-1] if self.need_pooler else None


def openvino_backend(checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads=None) -> OpenVinoBackend:
    from bertserve.encode.backends.onnx_backend import onnx_backend, session_threads
    exported = onnx_backend("onnx", checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads)
    return OpenVinoBackend(exported.path, hidden_indices, need_pooler, use_type_ids, session_threads(num_threads))
