"""Feature arrays read in place: ``.npz`` members memory-mapped, shards seen as one array.

The feature cache stores each shard as an uncompressed ``.npz`` (``np.savez``): every member is a
``.npy`` file stored as is inside the zip, so its bytes can be mapped from the shard file directly.
Mapped read-only, the pages live in the operating system's page cache, once per machine however many
search workers read them (each worker loading its own copy was most of a worker's memory on CamVid).

``ShardedArray`` puts the shards' arrays end to end behind the indexing the proxy uses: ``len``,
``shape``, ``dtype``, an integer, a slice or an array of integers along the first axis (each returns
an ordinary in-memory ``ndarray``).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Sequence

import numpy as np

_LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30


def map_npz_member(path: str, key: str) -> np.ndarray | None:
    """Member ``key`` of the ``.npz`` at ``path`` as a read-only memory map, or None when it is compressed
    (``np.savez_compressed``) and so cannot be mapped.

    Raises:
        KeyError: no member ``key``.
        ValueError: the member is not a plain ``.npy`` array (object arrays are refused: no pickle).
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER_SIZE)
        if len(header) != _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER:
            raise ValueError(f"{path}: member {key}.npy has no zip local header at {info.header_offset}")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: member {key}.npy holds Python objects; refusing to read it")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class ShardedArray:
    """Arrays with equal trailing shapes and dtypes, read as one along the first axis (see the module doc).

    Args:
        parts: the arrays (memory maps or in-memory), in order.
        length: use only the first ``length`` rows (None: all).
    """

    def __init__(self, parts: Sequence[np.ndarray], length: int | None = None):
        if not parts:
            raise ValueError("ShardedArray needs at least one array")
        trailing, dtype = parts[0].shape[1:], parts[0].dtype
        for part in parts:
            if part.shape[1:] != trailing or part.dtype != dtype:
                raise ValueError(
                    f"shards differ: {part.dtype} {list(part.shape)} vs {dtype} [n, {', '.join(map(str, trailing))}]"
                )
        sizes = np.array([len(p) for p in parts], np.int64)
        total = int(sizes.sum()) if length is None else min(int(sizes.sum()), int(length))
        self._parts = list(parts)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.shape = (total, *trailing)
        self.dtype = dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the rows (mapped: on disk and in the page cache, not in this process' heap)."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {index} is out of bounds for {len(self)} rows")
            shard = int(np.searchsorted(self._starts, i, side="right")) - 1
            return np.asarray(self._parts[shard][i - self._starts[shard]])
        if isinstance(index, slice):
            rows = np.arange(*index.indices(len(self)))
        else:
            rows = np.asarray(index)
            if rows.dtype == bool or rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise TypeError("ShardedArray takes an integer, a slice or a 1-D array of integers")
            rows = np.where(rows < 0, rows + len(self), rows)
            if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
                raise IndexError(f"an index is out of bounds for {len(self)} rows")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        shards = np.searchsorted(self._starts, rows, side="right") - 1
        for shard in np.unique(shards):
            chosen = shards == shard
            local = rows[chosen] - self._starts[shard]
            part = self._parts[shard]
            if len(local) > 1 and np.all(np.diff(local) == 1):  # A run of rows: one slice of the map.
                out[chosen] = part[local[0] : local[-1] + 1]
            else:
                out[chosen] = part[local]
        return out

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)
