"""A GGUF file's index read in a fraction of a second: its metadata and where each tensor is.

The `gguf` package's `GGUFReader` turns every element of every metadata array into numpy views;
for a 262,144-token vocabulary that takes about 17 s and 700 MB. chatapp needs the scalars, the
chat template and the tensor table, so `read_index` walks the header itself (the format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) and skips arrays it is not asked
for, and the tensors are read as views of one memory map of the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
"""GGUF value types of fixed size, as struct formats."""
STRING, ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The file is not a GGUF file chatapp can read."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file."""

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    """Outermost dimension first (`(rows, columns)` for a matrix), as numpy and torch order them."""
    data: np.ndarray = field(repr=False)
    """The raw bytes, `(rows, bytes a row)` uint8 (a view of the file's memory map)."""

    @property
    def type_name(self) -> str:
        return self.type.name


@dataclass(frozen=True)
class GGUFIndex:
    fields: dict
    """Metadata: scalars and strings as values, arrays as lists where asked for, else their
    length (an int) under the key plus ".length"."""
    tensors: list[TensorEntry]
    mapping: mmap.mmap | None = field(default=None, repr=False)
    """The file's memory map, which the tensors' data are views of."""

    @property
    def architecture(self) -> str:
        return self.fields.get("general.architecture", "")

    def release_rows(self, tensor: TensorEntry, start: int, stop: int) -> None:
        """`release` for rows `start:stop` of `tensor` only (whole pages inside them)."""
        self._drop(tensor.data[start:stop])

    def release(self, tensor: TensorEntry) -> None:
        """Drop the file's pages under `tensor` from this process's memory once it has been
        copied: they count in its resident size (and its peak) while mapped, and a loader that
        reads a whole file would otherwise hold all of it at once. Reading it again re-reads
        the file."""
        self._drop(tensor.data)

    def _drop(self, data: np.ndarray) -> None:
        madvise = getattr(self.mapping, "madvise", None)
        if madvise is None or not hasattr(mmap, "MADV_DONTNEED") or data.size == 0:
            return
        start = data.ctypes.data - np.frombuffer(self.mapping, dtype=np.uint8, count=1).ctypes.data
        begin = start - start % mmap.PAGESIZE
        try:
            madvise(mmap.MADV_DONTNEED, begin, start + data.size - begin)
        except (OSError, ValueError):
            pass  # only memory is at stake


class _Cursor:
    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer, self.at = buffer, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.buffer):
            raise GGUFFormatError("the file ends inside its header")
        out = self.buffer[self.at:self.at + size].tobytes()
        self.at += size
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip_values(self, kind: int, count: int) -> None:
        if kind in _SCALARS:
            self.at += struct.calcsize(_SCALARS[kind]) * count
        elif kind == STRING:
            for _ in range(count):
                self.at += 8 + struct.unpack_from("<Q", self.buffer, self.at)[0]
        else:
            raise GGUFFormatError(f"nested metadata array of type {kind}")

    def value(self, kind: int, wanted: bool):
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if not wanted:
                self.skip_values(item, count)
                return count
            return [self.value(item, True) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata type {kind}")


def read_index(path: Path, arrays: tuple[str, ...] = (), every_array: bool = False) -> GGUFIndex:
    """The metadata and tensor table of the GGUF file at `path`; arrays only for the keys in
    `arrays` (all of them with `every_array`: a 262,144-token vocabulary takes about 2 s).

    Raises:
        GGUFFormatError: not a GGUF file, a version before 2, or a damaged header.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise GGUFFormatError(f"{path.name} is empty")
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    mapped = np.frombuffer(mapping, dtype=np.uint8)
    cursor = _Cursor(mapped)
    if cursor.take(4) != MAGIC:
        raise GGUFFormatError(f"{path.name} is not a GGUF file")
    version = cursor.unpack("<I")
    if version < 2:
        raise GGUFFormatError(f"{path.name} is GGUF version {version}; chatapp reads version 2 and later")
    tensor_count, field_count = cursor.unpack("<Q"), cursor.unpack("<Q")
    fields: dict = {}
    for _ in range(field_count):
        key = cursor.string()
        kind = cursor.unpack("<I")
        wanted = every_array or key in arrays
        value = cursor.value(kind, wanted)
        fields[key + ".length" if kind == ARRAY and not wanted else key] = value
    table = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.unpack("<Q") for _ in range(cursor.unpack("<I"))]
        kind, offset = cursor.unpack("<I"), cursor.unpack("<Q")
        table.append((name, GGMLQuantizationType(kind), tuple(reversed(dims)), offset))
    alignment = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-cursor.at // alignment) * alignment
    tensors = []
    for name, kind, shape, offset in table:
        block, size = GGML_QUANT_SIZES[kind]
        columns = shape[-1] if shape else 1
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        row_bytes = columns // block * size
        begin = start + offset
        if begin + rows * row_bytes > len(mapped):
            raise GGUFFormatError(f"{path.name} ends inside tensor {name}: the file is truncated")
        tensors.append(TensorEntry(name, kind, shape, mapped[begin:begin + rows * row_bytes].reshape(rows, row_bytes)))
    return GGUFIndex(fields, tensors, mapping)
