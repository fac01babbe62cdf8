"""Growable ``.npy`` files for the on-disk WebGraph dataset (fixed 128-byte headers) and reading them back mapped.

Every ``.npy`` written here has a fixed ``HEADER_BYTES`` header, so the shape can be
rewritten in place once the final length is known (after deduplication or appending)
without moving the data.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

HEADER_BYTES = 128


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A valid .npy v1.0 header padded to exactly ``HEADER_BYTES`` bytes."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    hlen = HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(body) + 1 > hlen:  # pragma: no cover - shapes here are 1-D
        raise ValueError(f"npy header too long for shape {shape}")
    body = body + b" " * (hlen - len(body) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen) + body


def create_npy(path: Path, dtype: np.dtype, length: int) -> np.memmap | None:
    """Creates a sparse .npy file of ``length`` items and maps it read-write (None if empty)."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        f.write(npy_header(dtype, (length,)))
        f.truncate(HEADER_BYTES + length * dtype.itemsize)
    if length == 0:
        return None  # mmap of an empty range is not allowed
    return np.memmap(path, dtype=dtype, mode="r+", offset=HEADER_BYTES, shape=(length,))


def shrink_npy(path: Path, dtype: np.dtype, length: int) -> None:
    """Rewrites the header of a file from :func:`create_npy` to ``length`` items and truncates."""
    dtype = np.dtype(dtype)
    with open(path, "r+b") as f:
        f.write(npy_header(dtype, (length,)))
        f.truncate(HEADER_BYTES + length * dtype.itemsize)


class NpyAppender:
    """Appends 1-D arrays to a .npy file; the header is fixed up on close."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._f = open(path, "wb")
        self._f.write(npy_header(self.dtype, (0,)))

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self._f.write(memoryview(a).cast("B"))
        self.length += len(a)

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(npy_header(self.dtype, (self.length,)))
        self._f.close()


def load_npy(path: Path, dtype: np.dtype) -> np.ndarray:
    """np.load(mmap_mode='r'), except empty arrays which cannot be mapped."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="r")


def ones(n: int) -> np.ndarray:
    """float32 [n] of ones without allocating (zero-stride, read-only)."""
    return np.broadcast_to(np.float32(1.0), (n,))
