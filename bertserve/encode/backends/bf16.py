"""bfloat16 matrix products on CPUs that compute them natively (AVX-512 BF16 or AMX); refused elsewhere, where
they would be emulated and slower than fp32.

Every nn.Linear's weight is cast to bfloat16 once, when the backend is built; activations are cast on the way in
and the product comes back fp32 (bias, LayerNorm, softmax and attention scores stay fp32). torch.autocast, used
before, cast every weight again on every call: ~22 M values per forward for all-MiniLM-L6-v2, a fixed cost that
dominated one-sentence calls. Vectors are the same to 1e-6 cosine either way (mean cos 0.99999 to fp32).
"""
from __future__ import annotations

import copy
import weakref

import torch

from bertserve.encode.backends import BackendUnavailable
from bertserve.machine_load import cpu_flags
from bertserve.encode.backends.torch_backend import TorchBackend

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


class Bf16Linear(torch.nn.Module):
    """nn.Linear with its weight stored in bfloat16: bf16 x bf16 product (fp32 accumulation), fp32 out."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x):
        y = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight).float()
        return y if self.bias is None else y + self.bias


_CONVERTED: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def bf16_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with bf16 Linear layers, made once per model; every other tensor (embeddings, LayerNorm)
    is shared with the fp32 model, not copied."""
    if model not in _CONVERTED:
        memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
        converted = copy.deepcopy(model, memo)
        for module in list(converted.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(module, name, Bf16Linear(child))
        _CONVERTED[model] = converted.eval()
    return _CONVERTED[model]


class Bf16Backend(TorchBackend):
    name = "bf16"

    def __init__(self, model, *args, **kwargs):
        if not native_bf16():
            raise BackendUnavailable("backend 'bf16' needs a CPU with native bfloat16 (AVX-512 BF16 or AMX: /proc/cpuinfo "
                               f"flags {' or '.join(BF16_FLAGS)}); this CPU has neither. Use 'onnx' or 'torch'.")
        super().__init__(bf16_model(model), *args, **kwargs)
