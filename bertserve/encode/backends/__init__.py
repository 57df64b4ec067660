"""Backends run the transformer and return the hidden states that pooling needs; pooling itself is shared.

  torch      the checkpoint's own fp32 model: the exact reference
  onnx       the model exported to ONNX (cached on disk), run by onnxruntime: exact to ~1e-6
  onnx-int8  the export quantized to int8: fastest, approximate
  bf16       torch with bfloat16 autocast, only on CPUs with native bf16 (AVX-512 BF16 / AMX): approximate
  openvino   that export run by OpenVINO: fp32, exact
  openvino-int8  that export quantized by NNCF (static int8, FFN outputs fp32), run by OpenVINO: approximate
  auto       per batch size, the fastest exact backend or an approximate one that passes the quality gate for
             this model (bf16 where native, openvino-int8 where installed), timed here (see selection.py)
"""
from __future__ import annotations

from bertserve.encode.backends.quality import QualityGate
from bertserve.errors import BadInput

CONCRETE = ("torch", "onnx", "onnx-int8", "bf16", "openvino", "openvino-int8")
BACKENDS = ("auto",) + CONCRETE
EXACT = ("torch", "onnx", "openvino")

__all__ = ["BACKENDS", "CONCRETE", "EXACT", "BackendUnavailable", "QualityGate", "make_backend"]


class BackendUnavailable(BadInput):
    """The backend asked for cannot run on this machine (e.g. bf16 on a CPU without native bfloat16)."""


def make_backend(name: str, checkpoint, hidden_indices: tuple[int, ...], need_pooler: bool, use_type_ids: bool,
                 num_threads: int | None = None):
    """A concrete backend by name (`auto` is resolved by the Encoder, which can measure candidates)."""
    if name == "torch":
        from bertserve.encode.backends.torch_backend import TorchBackend
        return TorchBackend(checkpoint.model, checkpoint.num_layers, hidden_indices, need_pooler)
    if name == "bf16":
        from bertserve.encode.backends.bf16 import Bf16Backend
        return Bf16Backend(checkpoint.model, checkpoint.num_layers, hidden_indices, need_pooler)
    if name in ("onnx", "onnx-int8"):
        from bertserve.encode.backends.onnx_backend import onnx_backend
        return onnx_backend(name, checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads)
    if name == "openvino":
        from bertserve.encode.backends.openvino_backend import openvino_backend
        return openvino_backend(checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads)
    if name == "openvino-int8":
        from bertserve.encode.backends.openvino_backend import openvino_int8_backend
        return openvino_int8_backend(checkpoint, hidden_indices, need_pooler, use_type_ids, num_threads)
    raise BadInput(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
