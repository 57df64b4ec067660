"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) with numpy alone, no TensorFlow.

A checkpoint with prefix P is P.index plus data shards P.data-00000-of-0000N. The index is an SSTable
(LevelDB's table layout): blocks of prefix-compressed key/value entries with restart points, an index
block pointing at them, and a 48-byte footer. Key "" holds a BundleHeaderProto; every other key is a
tensor name whose value is a BundleEntryProto (dtype, shape, shard, offset, size, masked CRC-32C).
Shards hold the raw little-endian tensor bytes. The protobufs are decoded from the wire format here.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertserve.errors import MissingFile, NotFound
from bertserve.models.checkpoint import (
    CheckpointError,  # one error type for every unusable checkpoint
)
from bertserve.models.crc32c import crc32c, unmask

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER_LEN = 5  # compression type byte + masked CRC of block and type

# tensorflow/core/framework/types.proto numbers -> numpy dtypes (bfloat16 is widened when read).
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 8: "<c8", 9: "<i8", 10: "?",
           14: "bfloat16", 17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8"}
_DT_STRING = 7


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str            # numpy dtype string, "bfloat16", or "string"
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    masked_crc: int | None


# --- protobuf wire format --------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint longer than 10 bytes")


def _fields(buf: bytes) -> dict[int, list]:
    """field number -> values (ints for varint/fixed, bytes for length-delimited)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise CheckpointError("truncated protobuf message")
        out.setdefault(field, []).append(value)
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _last(fields: dict[int, list], number: int, default=0):
    return fields[number][-1] if number in fields else default


def _parse_entry(name: str, value: bytes) -> TensorEntry:
    f = _fields(value)
    if 7 in f:
        raise CheckpointError(f"tensor {name!r} is saved as partitioned slices, which this reader does not join")
    code = _last(f, 1)
    dtype = "string" if code == _DT_STRING else _DTYPES.get(code)
    if dtype is None:
        raise CheckpointError(f"tensor {name!r} has TensorFlow dtype code {code}, which this reader does not handle")
    shape_fields = _fields(_last(f, 2, b""))
    if _last(shape_fields, 3):
        raise CheckpointError(f"tensor {name!r} has a shape of unknown rank")
    shape = tuple(_int64(_last(_fields(d), 1)) for d in shape_fields.get(2, []))
    return TensorEntry(name=name, dtype=dtype, shape=shape, shard_id=_last(f, 3), offset=_int64(_last(f, 4)),
                       size=_int64(_last(f, 5)), masked_crc=f[6][-1] if 6 in f else None)


# --- SSTable -----------------------------------------------------------------------------------

def _handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    """A block handle (offset, size) starting at buf[pos], and the position after it."""
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _index_handle(data: bytes) -> tuple[int, int]:
    """(offset, size) of the index block, from the footer; the metaindex handle before it is unused by TF."""
    footer = data[-_FOOTER_LEN:]
    _, _, pos = _handle(footer)
    offset, size, _ = _handle(footer, pos)
    return offset, size


def _block(data: bytes, offset: int, size: int, where: str) -> bytes:
    end = offset + size + _BLOCK_TRAILER_LEN
    if end > len(data):
        raise CheckpointError(f"{where} is truncated: a block ends at byte {end}, the file has {len(data)}")
    contents, kind = data[offset:offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:end], "little")
    if unmask(stored) != crc32c(data[offset:offset + size + 1]):
        raise CheckpointError(f"{where} is corrupt: block checksum mismatch at byte {offset}")
    if kind != 0:
        # TensorFlow's bundle writer always turns compression off for the index.
        raise CheckpointError(f"{where} has a block compressed with method {kind} (1 = snappy); "
                              "only uncompressed index blocks, as TensorFlow writes them, are supported")
    return contents


def _block_entries(block: bytes, where: str):
    if len(block) < 4:
        raise CheckpointError(f"{where} is corrupt: block of {len(block)} bytes")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{where} is corrupt: bad restart count {num_restarts}")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError(f"{where} is corrupt: bad entry at byte {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _table_items(path: Path):
    data = path.read_bytes()
    where = path.name
    if len(data) < _FOOTER_LEN or int.from_bytes(data[-8:], "little") != _TABLE_MAGIC:
        raise CheckpointError(f"{where} is not a TensorFlow V2 checkpoint index (bad or missing footer; "
                              "truncated, or an old V1 checkpoint?)")
    index = _block(data, *_index_handle(data), where)
    for _, handle in _block_entries(index, where):
        offset, size, _ = _handle(handle)
        yield from _block_entries(_block(data, offset, size, where), where)


# --- the bundle --------------------------------------------------------------------------------

class TensorBundle:
    """Tensors of one checkpoint, by name. `prefix` is the path without ".index"."""

    def __init__(self, prefix: str | Path, verify: bool = True):
        self.prefix = Path(prefix)
        self.verify = verify
        index = self.prefix.with_name(self.prefix.name + ".index")
        if not index.is_file():
            raise MissingFile(f"checkpoint index {index} not found")
        items = iter(_table_items(index))
        key, header = next(items, (None, None))
        if key != b"":
            raise CheckpointError(f"{index.name} has no bundle header entry")
        h = _fields(header)
        self.num_shards = _last(h, 1)
        if _last(h, 2) != 0:
            raise CheckpointError(f"{index.name} was written big-endian; only little-endian is supported")
        min_consumer = _last(_fields(_last(h, 3, b"")), 2)
        if min_consumer > 1:
            raise CheckpointError(f"{index.name} needs bundle format version {min_consumer}; this reader knows 1")
        self.entries: dict[str, TensorEntry] = {}
        for k, v in items:
            name = k.decode("utf-8")
            self.entries[name] = _parse_entry(name, v)
        self._check_shards()

    def shard_path(self, shard_id: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def _check_shards(self) -> None:
        """Fail now, naming the file, rather than on the first tensor that lives in a bad shard."""
        sizes = {}
        for i in range(self.num_shards):
            p = self.shard_path(i)
            if not p.is_file():
                raise MissingFile(f"checkpoint data shard {p} not found ({self.num_shards} expected)")
            sizes[i] = p.stat().st_size
        for e in self.entries.values():
            if e.shard_id not in sizes:
                raise CheckpointError(f"tensor {e.name!r} names shard {e.shard_id}, the header says {self.num_shards}")
            if e.offset + e.size > sizes[e.shard_id]:
                raise CheckpointError(f"{self.shard_path(e.shard_id).name} is truncated: tensor {e.name!r} needs "
                                      f"bytes {e.offset}..{e.offset + e.size}, the file has {sizes[e.shard_id]}")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def read(self, name: str) -> np.ndarray:
        """The tensor as a numpy array (bfloat16 widened to float32; strings are not supported)."""
        e = self.entries.get(name)
        if e is None:
            raise NotFound(f"no tensor {name!r} in checkpoint {self.prefix}")
        if e.dtype == "string":
            raise CheckpointError(f"tensor {name!r} holds strings, which this reader does not decode")
        count = int(np.prod(e.shape, dtype=np.int64))
        disk_dtype = np.dtype("<u2" if e.dtype == "bfloat16" else e.dtype)
        if count * disk_dtype.itemsize != e.size:
            raise CheckpointError(f"tensor {name!r} has {e.size} bytes on disk, its shape {e.shape} needs "
                                  f"{count * disk_dtype.itemsize}")
        arr = np.empty(count, dtype=disk_dtype)  # read straight into the array: one copy of the data
        with open(self.shard_path(e.shard_id), "rb") as f:
            f.seek(e.offset)
            got = f.readinto(memoryview(arr).cast("B"))
        if got != e.size:
            raise CheckpointError(f"{self.shard_path(e.shard_id).name} is truncated: tensor {name!r} got {got} "
                                  f"of {e.size} bytes")
        if self.verify and e.masked_crc is not None and crc32c(arr) != unmask(e.masked_crc):
            raise CheckpointError(f"tensor {name!r} in {self.shard_path(e.shard_id).name} is corrupt: "
                                  "checksum mismatch")
        if e.dtype == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False).reshape(e.shape)


def find_checkpoint_prefix(folder: str | Path) -> Path:
    """The bundle prefix in a folder: the one named by its `checkpoint` file, else its only *.index."""
    folder = Path(folder)
    state = folder / "checkpoint"
    if state.is_file():
        for line in state.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model_checkpoint_path":
                # Written with an absolute path on the training machine: keep only the file name.
                prefix = folder / Path(value.strip().strip('"')).name
                if prefix.with_name(prefix.name + ".index").is_file():
                    return prefix
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise MissingFile(f"no TensorFlow checkpoint index (*.index, e.g. bert_model.ckpt.index) in {folder}")
    names = ", ".join(p.name for p in indexes)
    raise CheckpointError(f"{folder} holds several checkpoints ({names}) and no `checkpoint` file naming one")
