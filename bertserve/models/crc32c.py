"""CRC-32C (Castagnoli), as TensorFlow checksums its checkpoint blocks and tensors, in numpy.

A CRC is a byte-by-byte recurrence, which plain Python runs at about 12 MB/s: too slow for a 400 MB BERT
checkpoint. The register update is linear over GF(2), so the data is cut into a few thousand equal lanes
whose CRCs numpy advances side by side, four bytes per step through two 16-bit tables. Lane results are
then merged pairwise: crc(a + b) = shift(crc(a), len(b)) xor crc(b), where "shift by n bytes" (feeding n
zero bytes) is itself a linear map, kept as two 16-bit tables for each power-of-two length.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reversed
_MASK_DELTA = 0xA282EAD8
_LANE0 = 256  # the shortest lane, in bytes; lanes are _LANE0 * 2**k long
_LANES = 4096  # about this many lanes side by side: wide enough to amortise numpy's per-step cost
_SMALL = 1024  # below this many bytes the plain loop is faster


def _byte_table() -> np.ndarray:
    t = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        t[i] = c
    return t


_T0 = _byte_table()
_T0_LIST = [int(x) for x in _T0]
_I16 = np.arange(1 << 16, dtype=np.uint32)


def _word_tables() -> tuple[np.ndarray, np.ndarray]:
    """Advance a register (already xored with the next 4 data bytes) by those 4 bytes: lo[c & 0xFFFF] ^ hi[c >> 16]."""
    t = [_T0]
    for _ in range(3):
        t.append((t[-1] >> 8) ^ _T0[t[-1] & 0xFF])  # t[k][b]: byte b followed by k zero bytes
    return t[3][_I16 & 0xFF] ^ t[2][_I16 >> 8], t[1][_I16 & 0xFF] ^ t[0][_I16 >> 8]


_LO, _HI = _word_tables()


def _advance_bytes(reg: int, data: bytes) -> int:
    t0 = _T0_LIST
    for b in data:
        reg = t0[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _advance_lanes(regs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """One register per lane; words is (steps, lanes) of little-endian uint32."""
    for row in words:
        c = regs ^ row
        regs = _LO[c & 0xFFFF] ^ _HI[c >> 16]
    return regs


def _linear_tables(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 16-bit tables for the GF(2)-linear map sending bit b to images[b]."""
    lo = np.zeros(1 << 16, dtype=np.uint32)
    hi = np.zeros(1 << 16, dtype=np.uint32)
    for bit in range(16):
        on = (_I16 >> bit) & 1 == 1
        lo[on] ^= images[bit]
        hi[on] ^= images[16 + bit]
    return lo, hi


@lru_cache(maxsize=None)
def _shift(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables for feeding _LANE0 * 2**level zero bytes through the register."""
    if level == 0:
        basis = np.array([1 << b for b in range(32)], dtype=np.uint32)
        images = _advance_lanes(basis, np.zeros((_LANE0 // 4, 32), dtype=np.uint32))
    else:
        images = _apply(_shift(level - 1), _apply(_shift(level - 1), np.array([1 << b for b in range(32)],
                                                                              dtype=np.uint32)))
    return _linear_tables(images)


def _apply(tables: tuple[np.ndarray, np.ndarray], v: np.ndarray) -> np.ndarray:
    return tables[0][v & 0xFFFF] ^ tables[1][v >> 16]


def _extend(reg: int, buf: np.ndarray) -> int:
    while buf.size >= _SMALL:
        level = max(0, (buf.size // (_LANE0 * _LANES)).bit_length() - 1)
        lane = _LANE0 << level
        count = buf.size // lane
        body = buf[: count * lane].view("<u4").reshape(count, lane // 4)
        crcs = _advance_lanes(np.zeros(count, dtype=np.uint32), np.ascontiguousarray(body.T))
        # Zero lanes in front change nothing (a zero register stays zero over zero bytes): pad to a power of two.
        width = 1 << (count - 1).bit_length()
        crcs = np.concatenate([np.zeros(width - count, dtype=np.uint32), crcs])
        k = level
        while crcs.size > 1:
            crcs = _apply(_shift(k), crcs[0::2]) ^ crcs[1::2]
            k += 1
        start = np.array([reg], dtype=np.uint32)  # the incoming register, shifted over the whole body
        for bit in range(count.bit_length()):
            if count >> bit & 1:
                start = _apply(_shift(level + bit), start)
        reg = int(crcs[0] ^ start[0])
        buf = buf[count * lane:]
    return _advance_bytes(reg, buf.tobytes())


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The standard CRC-32C of data (initial register and final xor 0xFFFFFFFF)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return _extend(0xFFFFFFFF, buf) ^ 0xFFFFFFFF


def unmask(masked: int) -> int:
    """TensorFlow stores CRCs 'masked' (rotated and offset) so CRCs of CRCs stay well-behaved."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
