"""CRC-32C (Castagnoli), as TensorFlow checksums its checkpoint blocks and tensors, in numpy.

A CRC is a byte-by-byte recurrence, which plain Python runs at a few MB/s: too slow for a 400 MB
BERT checkpoint. The register update is linear over GF(2), so the data is cut into equal lanes whose
CRCs numpy advances side by side (four bytes per step, "slicing-by-4" tables), and the lane results are
chained afterwards: the register after lane i, pushed through L zero bytes, xor the CRC of lane i+1.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reversed
_MASK_DELTA = 0xA282EAD8
_SMALL = 1 << 13  # below this many bytes the plain loop is faster than setting up lanes


def _make_tables() -> np.ndarray:
    t = np.zeros((4, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        t[0, i] = c
    for k in range(1, 4):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


_T = _make_tables()
_T0 = [int(x) for x in _T[0]]


def _advance_bytes(reg: int, data: bytes | memoryview) -> int:
    t0 = _T0
    for b in bytes(data):
        reg = t0[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _advance_lanes(regs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Advance one register per lane; words is (steps, lanes) of little-endian uint32."""
    t0, t1, t2, t3 = _T
    for row in words:
        c = regs ^ row
        regs = t3[c & 0xFF] ^ t2[(c >> 8) & 0xFF] ^ t1[(c >> 16) & 0xFF] ^ t0[c >> 24]
    return regs


@lru_cache(maxsize=64)
def _zero_shift_tables(nbytes: int) -> tuple[list[int], ...]:
    """Byte tables for the linear map 'push the register through nbytes zero bytes'."""
    basis = np.array([1 << b for b in range(32)], dtype=np.uint32)
    cols = _advance_lanes(basis, np.zeros((nbytes // 4, 32), dtype=np.uint32))
    tables = []
    for k in range(4):
        tab = np.zeros(256, dtype=np.uint32)
        for bit in range(8):
            tab[np.arange(256) & (1 << bit) != 0] ^= cols[8 * k + bit]
        tables.append([int(x) for x in tab])
    return tuple(tables)


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The standard CRC-32C of data (initial register and final xor 0xFFFFFFFF)."""
    buf = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) if isinstance(data, np.ndarray) \
        else memoryview(data).cast("B")
    n = len(buf)
    reg = 0xFFFFFFFF
    if n < _SMALL:
        return _advance_bytes(reg, buf) ^ 0xFFFFFFFF
    # About sqrt(n) lanes of about sqrt(n) bytes balances numpy's per-step cost against the chaining loop.
    lane = max(1024, int(np.sqrt(n)) // 64 * 64)
    lanes = n // lane
    body = np.frombuffer(buf[: lanes * lane], dtype="<u4").reshape(lanes, lane // 4)
    lane_crcs = _advance_lanes(np.zeros(lanes, dtype=np.uint32), np.ascontiguousarray(body.T))
    s0, s1, s2, s3 = _zero_shift_tables(lane)
    for c in lane_crcs.tolist():
        reg = s0[reg & 0xFF] ^ s1[(reg >> 8) & 0xFF] ^ s2[(reg >> 16) & 0xFF] ^ s3[reg >> 24] ^ c
    return _advance_bytes(reg, buf[lanes * lane:]) ^ 0xFFFFFFFF


def unmask(masked: int) -> int:
    """TensorFlow stores CRCs 'masked' (rotated and offset) so CRCs of CRCs stay well-behaved."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
