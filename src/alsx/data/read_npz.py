"""Readers of arrays: ``.npz`` archives (whole, or one slice of the entries per process), dicts of arrays, scipy matrices.

An ``.npz`` holds ``rows``, ``cols`` and optionally ``values``, ``shape``, ``timestamps``,
``is_test``, ``row_ids``, ``col_ids`` (see /work/shared/data/README.md).  Headers are read
first (:func:`alsx.data.guards.npz_members`), so nothing is allocated for a damaged,
pickled or oversized array; alsx never unpickles.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from alsx.data import guards
from alsx.data.columns import np_bool, np_ids, np_timestamps, np_values
from alsx.data.raw import IngestError, Raw, fail, index_locator
from alsx.data.vocab import Vocab

# What reading an npz member can raise on a damaged file (a bad CRC, a cut deflate stream, an object
# array refused without pickle): each becomes an IngestError naming the file and the array.
_NPZ_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def read_arrays(arrays: Mapping[str, Any], source: str, refs: dict, *, native_index: bool, first: int = 0) -> Raw:
    """dict / npz: keys named by refs (default rows, cols, values, timestamps, is_test)."""
    keys = {
        "row": refs["row"] if refs["row"] is not None else "rows",
        "col": refs["col"] if refs["col"] is not None else "cols",
        "value": refs["value"] if refs["value"] is not None else "values",
        "timestamp": refs["timestamp"] if refs["timestamp"] is not None else "timestamps",
        "is_test": refs["is_test"] if refs["is_test"] is not None else "is_test",
    }
    available = list(arrays.keys())
    for role in ("row", "col"):
        if keys[role] not in arrays:
            raise fail(source, None, f"missing array {keys[role]!r}; available arrays: {available}")
    for role in ("value", "timestamp", "is_test"):
        if refs[role] is not None and keys[role] not in arrays:
            raise fail(source, None, f"missing array {keys[role]!r}; available arrays: {available}")
    present = {role: k for role, k in keys.items() if k in arrays}
    data = {}
    for role, k in present.items():
        a = _array(arrays, k, source)
        if a.ndim != 1:
            raise fail(source, None, f"array {k!r} must be one-dimensional, got shape {a.shape}")
        data[role] = a
    lengths = {present[r]: len(a) for r, a in data.items()}
    if len(set(lengths.values())) > 1:
        raise fail(source, None, f"arrays have different lengths: {lengths}")

    locate = index_locator("index", first)
    label = {role: f"array {k!r}" for role, k in present.items()}
    raw = Raw(
        source=source,
        rows=np_ids(data["row"], label["row"], source, locate),
        cols=np_ids(data["col"], label["col"], source, locate),
        values=np_values(data["value"], label["value"], source) if "value" in data else None,
        timestamps=np_timestamps(data["timestamp"], label["timestamp"], source, locate)
        if "timestamp" in data
        else None,
        is_test=np_bool(data["is_test"], label["is_test"], source, locate) if "is_test" in data else None,
        labels=label,
        locate=locate,
        native_index=native_index,
    )
    if "shape" in arrays:
        s = _array(arrays, "shape", source)
        if s.shape != (2,) or s.dtype.kind not in "iu" or (s < 0).any():
            raise fail(source, None, f"'shape' must hold two non-negative integers, got {s!r}")
        raw.shape = (int(s[0]), int(s[1]))
    for key, attr in (("row_ids", "row_vocab"), ("col_ids", "col_vocab")):
        if key in arrays:
            try:
                setattr(raw, attr, Vocab(_array(arrays, key, source)))
            except IngestError:
                raise
            except ValueError as e:
                raise fail(source, None, f"array {key!r}: {e}") from None
    return raw


def _array(arrays: Mapping[str, Any], key: str, source: str) -> np.ndarray:
    """``arrays[key]`` as an array; a damaged npz member or an object array is an error naming both."""
    try:
        a = np.asarray(arrays[key])
    except IngestError:
        raise
    except _NPZ_READ_ERRORS as e:
        raise fail(source, None, f"cannot read array {key!r} ({type(e).__name__}: {e})") from None
    return a


def read_npz(path: str, refs: dict, part: tuple[int, int] | None = None) -> Raw:
    """The whole archive, or with ``part`` = (i, n) the i-th of n equal slices of its entry arrays."""
    if part is not None:
        with _NpzSlices(path, part) as z:
            return read_arrays(z, path, refs, native_index=True, first=z.first)
    try:  # headers first: nothing is allocated for a damaged, pickled or oversized array
        guards.npz_members(path, lambda k: k in _NpzSlices.ENTRY_KEYS or k in (refs[r] for r in refs))
    except guards.Refused as e:
        raise fail(path, e.where, e.problem) from None
    try:
        z = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as e:
        raise fail(path, None, f"not a readable .npz file ({type(e).__name__}: {e})") from None
    if not hasattr(z, "files"):
        raise fail(path, None, "holds a single array, expected an .npz archive with 'rows' and 'cols'")
    with z:
        return read_arrays(z, path, refs, native_index=True)


class _NpzSlices(Mapping):
    """An .npz archive whose entry arrays read as one slice ``[first, stop)``, part i of n.

    Only the slice's bytes are kept: a stored member is read from its offset, a
    compressed one is decompressed as a stream up to the slice's end.  The entry count
    comes from the first entry array's header; other arrays (shape, row_ids, col_ids)
    read whole.
    """

    ENTRY_KEYS = ("rows", "cols", "values", "timestamps", "is_test")

    def __init__(self, path: str, part: tuple[int, int]):
        self.path = path
        try:  # headers first: nothing is allocated for a damaged, pickled or oversized array
            guards.npz_members(path, lambda k: False)  # a part's share of the sizes is not known yet
        except guards.Refused as e:
            raise fail(path, e.where, e.problem) from None
        try:
            self._zip = zipfile.ZipFile(path)
        except _NPZ_READ_ERRORS as e:
            raise fail(path, None, f"not a readable .npz file ({e})") from None
        self._names = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
        n = None
        for k in self.ENTRY_KEYS:
            if k in self._names:
                n = self._header(k)[0][0] if self._header(k)[0] else 0
                break
        n = 0 if n is None else n
        self.first, self.stop = n * part[0] // part[1], n * (part[0] + 1) // part[1]

    def _header(self, key: str):
        with self._zip.open(self._names[key]) as f:
            return self._read_header(f, key)

    def _read_header(self, f, key: str):
        fmt = np.lib.format
        try:
            version = fmt.read_magic(f)
            shape, fortran, dtype = fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
        except ValueError as e:
            raise fail(self.path, None, f"cannot read array {key!r}: {e}") from None
        if dtype.hasobject:
            raise fail(self.path, None, f"cannot read array {key!r}: object arrays need pickle, which alsx never loads")
        return shape, fortran, dtype

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._names:
            raise KeyError(key)
        try:
            return self._get(key)
        except IngestError:
            raise
        except _NPZ_READ_ERRORS as e:
            raise fail(self.path, None, f"cannot read array {key!r} ({type(e).__name__}: {e})") from None

    def _get(self, key: str) -> np.ndarray:
        if key not in self.ENTRY_KEYS:
            with self._zip.open(self._names[key]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        with self._zip.open(self._names[key]) as f:
            shape, _, dtype = self._read_header(f, key)
            if len(shape) != 1:
                raise fail(self.path, None, f"array {key!r} must be one-dimensional, got shape {shape}")
            lo, hi = min(self.first, shape[0]), min(self.stop, shape[0])
            f.seek(f.tell() + lo * dtype.itemsize)  # a compressed member decompresses up to here
            buf = f.read((hi - lo) * dtype.itemsize)
        if len(buf) != (hi - lo) * dtype.itemsize:
            raise fail(self.path, None, f"array {key!r} ends early: the file is damaged")
        return np.frombuffer(buf, dtype=dtype)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __enter__(self) -> _NpzSlices:
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()


def read_scipy(m: Any, refs: dict) -> Raw:
    if any(refs[r] is not None for r in ("row", "col", "value", "timestamp", "is_test")):
        raise ValueError("row/col/value/timestamp/is_test do not apply to a scipy matrix")
    coo = m.tocoo()
    if coo.data.dtype.kind not in "iufb":
        raise IngestError(f"scipy matrix: unsupported data dtype {coo.data.dtype}")
    arrays = {"rows": coo.row, "cols": coo.col, "values": coo.data, "shape": np.asarray(coo.shape, dtype=np.int64)}
    return read_arrays(arrays, "scipy matrix", refs, native_index=True)
