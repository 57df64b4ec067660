"""CRC-32C (Castagnoli), as TensorFlow checksums its checkpoint blocks and tensors.

The checksum itself comes from `google-crc32c` (Google's C library, hardware CRC instructions where the CPU
has them); a 400 MB checkpoint is checked in well under a second. What is TensorFlow's own is the masking of
stored CRCs, kept here.
"""
from __future__ import annotations

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_CHUNK = 8 << 20  # bytes copied at a time from a non-bytes buffer


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The standard CRC-32C of data (initial register and final xor 0xFFFFFFFF)."""
    if isinstance(data, bytes):
        return google_crc32c.value(data)
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    # The C binding takes `bytes` only: feed other buffers in slices, so a large tensor is never copied whole.
    view = memoryview(data).cast("B")
    crc = 0
    for start in range(0, len(view), _CHUNK):
        crc = google_crc32c.extend(crc, bytes(view[start:start + _CHUNK]))
    return crc


def unmask(masked: int) -> int:
    """TensorFlow stores CRCs 'masked' (rotated and offset) so CRCs of CRCs stay well-behaved."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
