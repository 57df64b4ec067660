"""bfloat16 autocast on CPUs that compute it natively (AVX-512 BF16 or AMX); refused elsewhere, where it would be
emulated and slower than fp32."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from bertserve.encode.backends import BackendUnavailable
from bertserve.encode.backends.torch_backend import TorchBackend

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


class Bf16Backend(TorchBackend):
    name = "bf16"

    def __init__(self, *args, **kwargs):
        if not native_bf16():
            raise BackendUnavailable("backend 'bf16' needs a CPU with native bfloat16 (AVX-512 BF16 or AMX: /proc/cpuinfo "
                               f"flags {' or '.join(BF16_FLAGS)}); this CPU has neither. Use 'onnx' or 'torch'.")
        super().__init__(*args, **kwargs)

    def forward(self, input_ids, attention_mask, token_type_ids):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden, pooled = super().forward(input_ids, attention_mask, token_type_ids)
        return {i: h.float() for i, h in hidden.items()}, None if pooled is None else pooled.float()
