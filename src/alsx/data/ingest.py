"""Reading interaction data from files and in-memory objects into :class:`Interactions`.

One entry point, :func:`load_interactions`, reads

* ``.npz`` (keys ``rows``, ``cols``, optional ``values``, ``shape``, ``timestamps``,
  ``is_test``, ``row_ids``, ``col_ids``; see /work/shared/data/README.md),
* CSV / TSV (``.csv``, ``.tsv``; ``.txt`` whose first data line has a comma),
  optionally compressed (``.gz``, ``.bz2``); no comment lines,
* whitespace edge lists (``.edges``, ``.el``, other ``.txt``; runs of spaces / tabs;
  ``#`` and ``%`` comment lines; ``src dst [weight]``), optionally compressed,
* Parquet, a pandas ``DataFrame``, a scipy sparse matrix, or a dict / tuple of arrays,

validates every entry and returns the matrix with a one-line :class:`IngestSummary`.
Bad input raises :class:`IngestError` naming the source, the line (text files,
1-based) or row index (arrays, frames, Parquet; 0-based) and the offending value;
nothing is dropped silently.

Text is parsed block by block with ``pyarrow.csv`` (vectorised, bounded memory);
only after pyarrow rejects a block is that block re-scanned line by line in Python
to name the bad line. Memory is O(nnz): indices are kept as int32 wherever they fit
and the (row, col) sort uses one int64 key.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from alsx.data import guards
from alsx.data.matrix import Interactions
from alsx.data.vocab import Vocab, as_id_array
from alsx.errors import DataError, UsageError

__all__ = ["IngestError", "IngestSummary", "load_interactions"]

log = logging.getLogger(__name__)

_INT32_MAX = int(np.iinfo(np.int32).max)
_BLOCK_BYTES = 32 << 20  # text is parsed in blocks of about this many bytes
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_FMT_BY_SUFFIX = {
    ".npz": "npz",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",  # resolved to csv or edgelist by looking at the first data line
    ".edges": "edgelist",
    ".el": "edgelist",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_FORMATS = ("npz", "csv", "tsv", "edgelist", "parquet")
_INT_RE = re.compile(r"^\s*-?[0-9]+\s*$")  # what pyarrow accepts as int64 text
_WS_SPLIT = re.compile(r"[ \t\v\f\r]+")
_WS = " \t\v\f\r\n"
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}

ColumnRef = int | str | None
# What reading an npz member can raise on a damaged file (a bad CRC, a cut deflate stream, an object
# array refused without pickle): each becomes an IngestError naming the file and the array.
_NPZ_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
Location = Callable[[Sequence[int]], list[str]]


class IngestError(DataError):
    """Bad input data; the message names the source, the line or row, and the value."""


class InputNotFound(IngestError, FileNotFoundError):
    """The input path does not exist (still a FileNotFoundError for callers that catch that)."""


@dataclasses.dataclass(frozen=True)
class IngestSummary:
    """What happened to each entry read.

    ``rows_read == kept + merged_duplicates + dropped_zeros + rejected``.
    ``rejected`` is always 0 today (bad entries raise); it is kept for reports.
    """

    source: str
    rows_read: int
    kept: int
    merged_duplicates: int
    dropped_zeros: int
    rejected: int
    n_rows: int
    n_cols: int
    columns: str | None = None  # which columns were read for what, e.g. "row = column 'user' (header line 1)"

    def __str__(self) -> str:
        return (
            f"{self.source}: read {self.rows_read:,} entries, kept {self.kept:,} "
            f"({self.merged_duplicates:,} duplicates merged, {self.dropped_zeros:,} zeros dropped, "
            f"{self.rejected:,} rejected); matrix {self.n_rows:,} x {self.n_cols:,}"
            + (f"; {self.columns}" if self.columns else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A parsed id column: integer indices (numpy) or string ids (numpy <U or arrow strings).
IdColumn = np.ndarray | pa.ChunkedArray


@dataclasses.dataclass
class _Raw:
    """Columns as read from a source, before validation. All have length n."""

    source: str
    rows: IdColumn
    cols: IdColumn
    values: np.ndarray | None  # float64 or float32 [n], or None for binary input
    timestamps: np.ndarray | None  # int64 [n]
    is_test: np.ndarray | None  # bool [n]
    labels: dict[str, str]  # role -> how to name its column in messages
    locate: Location  # positions -> "line 5 ('a,b,1')" / "row 5"
    shape: tuple[int, int] | None = None  # declared by the source (npz, scipy)
    native_index: bool = False  # npz / scipy: ids='auto' means 'index'
    row_vocab: Vocab | None = None  # from npz row_ids / col_ids
    col_vocab: Vocab | None = None
    inferred_str: tuple[str, ...] = ()  # text id columns read as strings because a token was not an integer
    columns: str | None = None  # what was read from where, for the summary


def _fail(source: str, where: str | None, problem: str) -> IngestError:
    return IngestError(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


def _index_locator(word: str, first: int = 0) -> Location:
    """Positions -> "row 5" (``first``: the source index of position 0, for a part of a file)."""
    return lambda positions: [f"{word} {first + int(p)}" for p in positions]


# --------------------------------------------------------------------------- public entry


def load_interactions(
    source: Any,
    *,
    fmt: str | None = None,
    row: ColumnRef = None,
    col: ColumnRef = None,
    value: ColumnRef = None,
    timestamp: ColumnRef = None,
    is_test: ColumnRef = None,
    sep: str | None = None,
    header: bool | Literal["infer"] = "infer",
    shape: tuple[int, int] | None = None,
    ids: Literal["auto", "index", "map"] = "auto",
    square: bool = False,
    duplicates: Literal["sum", "first", "error"] = "sum",
    allow_negative: bool = False,
    keep_zeros: bool = True,
) -> tuple[Interactions, IngestSummary]:
    """Reads, validates and de-duplicates interactions from a file or an in-memory object.

    Args:
      source: a path (``.npz``, ``.csv``, ``.tsv``, ``.txt``, ``.edges``, ``.el``,
        ``.parquet``, text optionally ``.gz``/``.bz2``), a pandas DataFrame, a
        scipy sparse matrix, a dict of arrays with npz keys, or a tuple
        ``(rows, cols[, values])``.
      fmt: "npz", "csv", "tsv", "edgelist" or "parquet" (``--format``); inferred from the
        suffix when None.
      row, col, value, timestamp, is_test: columns, by header name or 0-based number
        (``--row`` ...).  npz / dict keys default to ``rows``, ``cols``, ``values``,
        ``timestamps``, ``is_test``.  For text, Parquet and DataFrames ``row`` and ``col``
        default to columns 0 and 1, but only when no column is left without a role: the
        source has two columns, or the others are given as ``value`` / ``timestamp`` /
        ``is_test`` (an edge list's third column is its weight).  Otherwise, and when a
        default would take a column already given another role, it is an error listing
        the columns: a timestamp column silently taken for the row id is never wanted.
        ``value`` None means binary input (every value 1.0), except that npz /
        dict sources use their ``values`` array, scipy matrices their data, and an
        edge list with a third column uses it as the weight.
      sep: CSV delimiter; default "," (".tsv": tab). Edge lists are split on runs of
        spaces and tabs.
      header: True, False or "infer".  "infer": when any column is given by name, the
        first line must be a header holding every name (an error otherwise, saying
        whether that line looks like data); when columns are given by number or left to
        the defaults, a CSV's first line is a header when none of its fields is a number,
        and an edge list has none (comment such a line out with ``#``).  A header read
        is reported in the summary (``columns``), so a first line taken for one is seen.
      shape: (n_rows, n_cols) to declare; indices outside it are an error. Overrides
        a shape stored in the source; may be larger than the data.
      ids: "index": ids are non-negative integer indices, kept as given (shape is
        ``shape`` or max + 1). "map": arbitrary int or str ids, mapped to dense
        indices through a :class:`Vocab` (sorted by id). "auto": "index" for
        npz / scipy and for integer columns, "map" for string columns.  A text file's
        id column is integers when every token is an integer, strings when at most half
        of its tokens are; a column mostly of integers with some other tokens (``1O``,
        a quoted ``"0,9"``) is an error naming the first such line (pass "map" if the
        ids really are strings): read as strings it would renumber every id.
        In "index" mode the extent taken from the largest index must be dense (at most
        16 x the entries once above 2**20) and every shape must fit in the available
        RAM (see :mod:`alsx.data.guards`), checked before anything of that size exists.
      square: rows and columns are the same node set (graphs): one shared
        vocabulary ("map") or an n x n shape ("index").
      duplicates: repeated (row, col) pairs. "sum": valued input sums the values
        (timestamps: latest; binary input collapses to one 1.0 entry); "first": keep
        the first occurrence; "error": raise naming the first repeated pair and both
        lines. Merged entries are counted in the summary either way.
      allow_negative: accept negative values (otherwise an error).
      keep_zeros: keep entries whose value is 0; when False they are dropped
        (before duplicates are merged) and counted.

    Returns:
      (interactions, summary): rows / cols int32 [nnz] sorted by (row, col), values
      float32 [nnz], optional int64 timestamps and bool is_test.

    Raises:
      IngestError: for any malformed or inconsistent input (a DataError; missing files
        raise :class:`InputNotFound`, also a FileNotFoundError).
      UsageError: an argument value that cannot work.
    """
    if ids not in ("auto", "index", "map"):
        raise UsageError(f"--ids (ids=) must be auto, index or map, got {ids!r}")
    if duplicates not in ("sum", "first", "error"):
        raise UsageError(f"--duplicates (duplicates=) must be sum, first or error, got {duplicates!r}")
    if header not in (True, False, "infer"):
        raise UsageError(f"header must be True, False or 'infer', got {header!r}")
    if shape is not None:
        if len(shape) != 2 or any(int(s) != s or s < 0 for s in shape):
            raise UsageError(f"shape must be two non-negative ints, got {shape!r}")
        shape = (int(shape[0]), int(shape[1]))
    refs = {"row": row, "col": col, "value": value, "timestamp": timestamp, "is_test": is_test}

    raw = _read_source(source, fmt=fmt, refs=refs, sep=sep, header=header, ids=ids, square=square)
    return _finish(
        raw,
        shape=shape,
        ids=ids,
        square=square,
        duplicates=duplicates,
        allow_negative=allow_negative,
        keep_zeros=keep_zeros,
    )


def _read_source(source: Any, *, fmt, refs, sep, header, ids, square, part=None, str_roles=()) -> _Raw:
    pd = sys.modules.get("pandas")  # a DataFrame can only exist if pandas was imported
    if pd is not None and isinstance(source, pd.DataFrame):
        return _read_frame(source, refs)
    sp = sys.modules.get("scipy.sparse")
    if sp is not None and sp.issparse(source):
        return _read_scipy(source, refs)
    if isinstance(source, Mapping):
        return _read_arrays(source, "arrays", refs, native_index=False)
    if isinstance(source, tuple):
        if len(source) not in (2, 3):
            raise IngestError(f"arrays: a tuple source must be (rows, cols) or (rows, cols, values), got {len(source)} items")
        return _read_arrays(dict(zip(("rows", "cols", "values"), source)), "arrays", refs, native_index=False)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot read interactions from {type(source).__name__}")

    path = os.fspath(source)
    if not os.path.exists(path):
        raise InputNotFound(f"{path}: no such file")
    if os.path.isdir(path):
        raise IngestError(f"{path}: is a directory, not a data file")
    if os.path.getsize(path) == 0:
        raise IngestError(f"{path}: no entries: the file is empty (0 bytes)")
    lower = path.lower()
    compressed = lower.endswith(_COMPRESSION_SUFFIXES)
    stem = lower.rsplit(".", 1)[0] if compressed else lower
    suffix = os.path.splitext(stem)[1]
    if fmt is None:
        fmt = _FMT_BY_SUFFIX.get(suffix)
        if fmt is None:
            raise IngestError(f"{path}: cannot infer the format from suffix {suffix!r}; pass --format (fmt=) one of "
                              f"{', '.join(_FORMATS)}")
    elif fmt not in _FORMATS:
        raise UsageError(f"--format (fmt=) must be one of {', '.join(_FORMATS)}, got {fmt!r}")
    if fmt == "npz":
        return _read_npz(path, refs, part)
    if fmt == "parquet":
        return _read_parquet(path, refs, part)
    return _read_text(path, fmt=fmt, refs=refs, sep=sep, header=header, ids=ids, square=square, part=part,
                      str_roles=str_roles)


# --------------------------------------------------------------------------- column checks


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _np_ids(arr: np.ndarray, label: str, source: str, locate: Location) -> IdColumn:
    """Integer ids stay numeric (int32 if they fit); strings stay strings; bool/fractions fail."""
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise _fail(source, None, f"{label} must be one-dimensional, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        raise _fail(source, None, f"{label} has dtype bool; expected integer indices or string ids")
    if kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.floor(arr[~bad])
        if bad.any():
            i = _first(bad)
            raise _fail(source, locate([i])[0], f"non-integer id {arr[i].item()!r} in {label} (dtype {arr.dtype})")
        arr = arr.astype(np.int64)
    elif kind == "O":
        try:
            typed = pa.array(arr, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise _fail(source, None, f"{label} mixes id types ({e}); use all int or all str") from None
        return _arrow_ids(pa.chunked_array([typed]), label, source, locate)
    elif kind not in "iuUS":
        raise _fail(source, None, f"{label} has unsupported dtype {arr.dtype}")
    if kind in "US":
        return as_id_array(arr, what=label)
    return _narrow(arr)


def _narrow(arr: np.ndarray) -> np.ndarray:
    """int32 when every value fits (halves memory for the usual case), else int64."""
    if arr.dtype == np.int32:
        return arr
    if arr.size and arr.min() >= 0 and arr.max() <= _INT32_MAX:
        return arr.astype(np.int32)
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        return arr  # left unsigned: the range check in _finish names the value
    return arr.astype(np.int64, copy=False)


def _arrow_plain(col: pa.ChunkedArray, label: str, source: str, locate: Location) -> pa.ChunkedArray:
    """Decodes dictionaries and rejects nulls (missing values are never skipped silently)."""
    if pa.types.is_dictionary(col.type):
        col = pa.chunked_array([c.dictionary_decode() for c in col.chunks], type=col.type.value_type)
    if col.null_count:
        i = _first(col.is_null().to_numpy(zero_copy_only=False))
        raise _fail(source, locate([i])[0], f"missing value in {label}")
    return col


def _arrow_ids(col: pa.ChunkedArray, label: str, source: str, locate: Location) -> IdColumn:
    col = _arrow_plain(col, label, source, locate)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return col.cast(pa.large_string()) if pa.types.is_string_view(t) else col
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return _np_ids(col.to_numpy(), label, source, locate)
    raise _fail(source, None, f"{label} has unsupported type {t}; expected integers or strings")


def _np_values(arr: np.ndarray, label: str, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "iufb":
        raise _fail(source, None, f"{label} must be a 1-D numeric array, got dtype {arr.dtype}, shape {arr.shape}")
    if arr.dtype == np.float32:
        return arr  # already the output dtype: no float64 copy of a large column
    return arr.astype(np.float64, copy=False)


def _np_timestamps(arr: np.ndarray, label: str, source: str, locate: Location) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "M":  # datetime64 -> Unix seconds
        return arr.astype("datetime64[s]").astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise _fail(source, None, f"{label} must be 1-D integer Unix times, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.floor(arr[~bad])
        if bad.any():
            i = _first(bad)
            raise _fail(source, locate([i])[0], f"non-integer timestamp {arr[i].item()!r} in {label}")
    return arr.astype(np.int64, copy=False)


def _np_bool(arr: np.ndarray, label: str, source: str, locate: Location) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind in "iu":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            i = _first(bad)
            raise _fail(source, locate([i])[0], f"{label} must be 0/1 or bool, got {arr[i].item()!r}")
        return arr.astype(bool)
    raise _fail(source, None, f"{label} must be bool, got dtype {arr.dtype}")


def _arrow_numeric(col: pa.ChunkedArray, role: str, label: str, source: str, locate: Location) -> np.ndarray:
    col = _arrow_plain(col, label, source, locate)
    if role == "timestamp" and pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("s", tz=col.type.tz), safe=False)
        return col.cast(pa.int64()).to_numpy()
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise _fail(source, None, f"{label} has type {col.type}; expected numbers")
    arr = col.to_numpy()
    if role == "value":
        return _np_values(arr, label, source)
    if role == "timestamp":
        return _np_timestamps(arr, label, source, locate)
    return _np_bool(arr, label, source, locate)


# --------------------------------------------------------------------------- array sources


def _read_arrays(arrays: Mapping[str, Any], source: str, refs: dict, *, native_index: bool, first: int = 0) -> _Raw:
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
            raise _fail(source, None, f"missing array {keys[role]!r}; available arrays: {available}")
    for role in ("value", "timestamp", "is_test"):
        if refs[role] is not None and keys[role] not in arrays:
            raise _fail(source, None, f"missing array {keys[role]!r}; available arrays: {available}")
    present = {role: k for role, k in keys.items() if k in arrays}
    data = {}
    for role, k in present.items():
        a = _array(arrays, k, source)
        if a.ndim != 1:
            raise _fail(source, None, f"array {k!r} must be one-dimensional, got shape {a.shape}")
        data[role] = a
    lengths = {present[r]: len(a) for r, a in data.items()}
    if len(set(lengths.values())) > 1:
        raise _fail(source, None, f"arrays have different lengths: {lengths}")

    locate = _index_locator("index", first)
    label = {role: f"array {k!r}" for role, k in present.items()}
    raw = _Raw(
        source=source,
        rows=_np_ids(data["row"], label["row"], source, locate),
        cols=_np_ids(data["col"], label["col"], source, locate),
        values=_np_values(data["value"], label["value"], source) if "value" in data else None,
        timestamps=_np_timestamps(data["timestamp"], label["timestamp"], source, locate) if "timestamp" in data else None,
        is_test=_np_bool(data["is_test"], label["is_test"], source, locate) if "is_test" in data else None,
        labels=label,
        locate=locate,
        native_index=native_index,
    )
    if "shape" in arrays:
        s = _array(arrays, "shape", source)
        if s.shape != (2,) or s.dtype.kind not in "iu" or (s < 0).any():
            raise _fail(source, None, f"'shape' must hold two non-negative integers, got {s!r}")
        raw.shape = (int(s[0]), int(s[1]))
    for key, attr in (("row_ids", "row_vocab"), ("col_ids", "col_vocab")):
        if key in arrays:
            try:
                setattr(raw, attr, Vocab(_array(arrays, key, source)))
            except IngestError:
                raise
            except ValueError as e:
                raise _fail(source, None, f"array {key!r}: {e}") from None
    return raw


def _array(arrays: Mapping[str, Any], key: str, source: str) -> np.ndarray:
    """``arrays[key]`` as an array; a damaged npz member or an object array is an error naming both."""
    try:
        a = np.asarray(arrays[key])
    except IngestError:
        raise
    except _NPZ_READ_ERRORS as e:
        raise _fail(source, None, f"cannot read array {key!r} ({type(e).__name__}: {e})") from None
    return a


def _read_npz(path: str, refs: dict, part: tuple[int, int] | None = None) -> _Raw:
    """The whole archive, or with ``part`` = (i, n) the i-th of n equal slices of its entry arrays."""
    if part is not None:
        with _NpzSlices(path, part) as z:
            return _read_arrays(z, path, refs, native_index=True, first=z.first)
    try:  # headers first: nothing is allocated for a damaged, pickled or oversized array
        guards.npz_members(path, lambda k: k in _NpzSlices.ENTRY_KEYS or k in (refs[r] for r in refs))
    except guards.Refused as e:
        raise _fail(path, e.where, e.problem) from None
    try:
        z = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as e:
        raise _fail(path, None, f"not a readable .npz file ({type(e).__name__}: {e})") from None
    if not hasattr(z, "files"):
        raise _fail(path, None, "holds a single array, expected an .npz archive with 'rows' and 'cols'")
    with z:
        return _read_arrays(z, path, refs, native_index=True)


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
            raise _fail(path, e.where, e.problem) from None
        try:
            self._zip = zipfile.ZipFile(path)
        except _NPZ_READ_ERRORS as e:
            raise _fail(path, None, f"not a readable .npz file ({e})") from None
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
            shape, fortran, dtype = (fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f))
        except ValueError as e:
            raise _fail(self.path, None, f"cannot read array {key!r}: {e}") from None
        if dtype.hasobject:
            raise _fail(self.path, None, f"cannot read array {key!r}: object arrays need pickle, which alsx never loads")
        return shape, fortran, dtype

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._names:
            raise KeyError(key)
        try:
            return self._get(key)
        except IngestError:
            raise
        except _NPZ_READ_ERRORS as e:
            raise _fail(self.path, None, f"cannot read array {key!r} ({type(e).__name__}: {e})") from None

    def _get(self, key: str) -> np.ndarray:
        if key not in self.ENTRY_KEYS:
            with self._zip.open(self._names[key]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        with self._zip.open(self._names[key]) as f:
            shape, _, dtype = self._read_header(f, key)
            if len(shape) != 1:
                raise _fail(self.path, None, f"array {key!r} must be one-dimensional, got shape {shape}")
            lo, hi = min(self.first, shape[0]), min(self.stop, shape[0])
            f.seek(f.tell() + lo * dtype.itemsize)  # a compressed member decompresses up to here
            buf = f.read((hi - lo) * dtype.itemsize)
        if len(buf) != (hi - lo) * dtype.itemsize:
            raise _fail(self.path, None, f"array {key!r} ends early: the file is damaged")
        return np.frombuffer(buf, dtype=dtype)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __enter__(self) -> "_NpzSlices":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()


def _read_scipy(m: Any, refs: dict) -> _Raw:
    if any(refs[r] is not None for r in ("row", "col", "value", "timestamp", "is_test")):
        raise ValueError("row/col/value/timestamp/is_test do not apply to a scipy matrix")
    coo = m.tocoo()
    if coo.data.dtype.kind not in "iufb":
        raise IngestError(f"scipy matrix: unsupported data dtype {coo.data.dtype}")
    arrays = {"rows": coo.row, "cols": coo.col, "values": coo.data, "shape": np.asarray(coo.shape, dtype=np.int64)}
    return _read_arrays(arrays, "scipy matrix", refs, native_index=True)


_FLAGS = {"row": "--row", "col": "--col", "value": "--value", "timestamp": "--timestamp", "is_test": "is_test="}


def _resolve_names(names: list[str], refs: dict, source: str, defaults: dict, *, where: str | None = None,
                   described: str | None = None) -> dict[str, int]:
    """Role -> column position, from a name or a 0-based number, or a default position.

    A default applies only when it leaves no column without a role and takes no column
    given another role (see ``load_interactions``); otherwise it is an error.

    Args:
      where: the line the names come from ("line 1 ('a,b')"), for messages.
      described: how to list the columns in messages (default: the names).
    """
    described = described if described is not None else f"the columns are {names}"
    frame = source == "DataFrame"  # only a library call: name its arguments, not the CLI's flags
    flags = {r: (f"{r}=" if frame else f) for r, f in _FLAGS.items()}
    out = {}
    for role in ("row", "col", "value", "timestamp", "is_test"):
        ref = refs[role] if refs[role] is not None else defaults.get(role)
        if ref is None:
            continue
        flag = flags[role]
        if isinstance(ref, str):
            hits = [i for i, n in enumerate(names) if n == ref]
            if not hits:
                raise _fail(source, where, f"no column {ref!r} for {flag}; {described}")
            if len(hits) > 1:
                raise _fail(source, where, f"column name {ref!r} ({flag}) appears {len(hits)} times; give it by "
                                           f"0-based number instead ({flag} {hits[0]})")
            out[role] = hits[0]
        elif isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            if not 0 <= ref < len(names):
                raise _fail(source, where, f"no column {ref} for {flag} (0-based); {described}")
            out[role] = int(ref)
        else:
            raise UsageError(f"{flag} must be a column name or number, got {ref!r}")
    defaulted = [r for r in defaults if refs[r] is None and r in out]
    if defaulted:
        given = {out[r]: r for r in out if refs[r] is not None}
        for r in defaulted:
            if out[r] in given:
                raise _fail(source, where, (
                    f"{flags[r]} defaults to column {out[r]}, which is already the {given[out[r]]} column "
                    f"({flags[given[out[r]]]}); {described}: pass {flags['row']} and {flags['col']}"))
        unused = [i for i in range(len(names)) if i not in set(out.values())]
        if unused:
            show = lambda i: repr(names[i]) if names[i] != str(i) else str(i)  # noqa: E731
            taken = ", ".join(f"{flags[r]}{'' if frame else ' '}{out[r]}"
                              + (f" ({names[out[r]]!r})" if names[out[r]] != str(out[r]) else "") for r in defaulted)
            fix = ("pass --row and --col (a header name or 0-based number), and --value / --timestamp for a column "
                   "to use" if source != "DataFrame" else "pass row= and col= (and value= ...) to load_interactions, "
                   "or select the id columns first (df[['user', 'item']])")
            raise _fail(source, where, (
                f"which columns hold the row and column ids? {described}; the defaults ({taken}) apply only when "
                f"every column has a role, and would leave column(s) {', '.join(show(i) for i in unused)} unused: "
                + fix))
    return out


def _columns_note(labels: dict[str, str], header: str | None = None) -> str:
    """What was read from where, for the summary: "row = column 'user', col = column 'item' (header line 1)"."""
    text = ", ".join(f"{role} = {labels[role]}" for role in ("row", "col", "value", "timestamp", "is_test")
                     if role in labels)
    return text + (f" ({header})" if header else "")


def _read_columns(cols: dict[str, pa.ChunkedArray | np.ndarray], source: str, labels: dict, locate: Location) -> _Raw:
    """Shared tail of DataFrame / Parquet: arrow or numpy columns by role -> _Raw."""

    def ids(role: str) -> IdColumn:
        c = cols[role]
        if isinstance(c, np.ndarray):
            return _np_ids(c, labels[role], source, locate)
        return _arrow_ids(c, labels[role], source, locate)

    def numeric(role: str) -> np.ndarray | None:
        c = cols.get(role)
        if c is None:
            return None
        if not isinstance(c, np.ndarray):
            return _arrow_numeric(c, role, labels[role], source, locate)
        if role == "value":
            return _np_values(c, labels[role], source)
        if role == "timestamp":
            return _np_timestamps(c, labels[role], source, locate)
        return _np_bool(c, labels[role], source, locate)

    return _Raw(
        source=source,
        rows=ids("row"),
        cols=ids("col"),
        values=numeric("value"),
        timestamps=numeric("timestamp"),
        is_test=numeric("is_test"),
        labels=labels,
        locate=locate,
    )


def _read_frame(df: Any, refs: dict) -> _Raw:
    source = "DataFrame"
    names = [str(c) for c in df.columns]
    # Integer refs are labels when the frame has such a column label, else positions.
    refs = dict(refs)
    for role, ref in refs.items():
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool) and ref in list(df.columns):
            refs[role] = str(ref)
    pos = _resolve_names(names, refs, source, {"row": 0, "col": 1})
    cols: dict[str, Any] = {}
    for role, p in pos.items():
        s = df.iloc[:, p]
        # Plain NumPy dtypes convert without copies; extension / object / category go via arrow.
        if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iufbM":
            cols[role] = s.to_numpy()
        else:
            try:
                cols[role] = pa.chunked_array([pa.Array.from_pandas(s)])
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise _fail(source, None, f"column {names[p]!r} mixes types ({e})") from None
    labels = {role: f"column {names[p]!r}" for role, p in pos.items()}
    raw = _read_columns(cols, source, labels, _index_locator("row"))
    raw.columns = _columns_note(labels)
    return raw


def _read_parquet(path: str, refs: dict, part: tuple[int, int] | None = None) -> _Raw:
    """The whole file, or with ``part`` = (i, n) the i-th of n contiguous runs of its row groups."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise _fail(path, None, f"not a readable Parquet file ({e})") from None
    names = list(pf.schema_arrow.names)
    pos = _resolve_names(names, refs, path, {"row": 0, "col": 1})
    columns = [names[p] for p in dict.fromkeys(pos.values())]
    if part is None:
        table, first_row = pf.read(columns=columns), 0
    else:
        groups = pf.metadata.num_row_groups
        lo, hi = groups * part[0] // part[1], groups * (part[0] + 1) // part[1]
        table = pf.read_row_groups(list(range(lo, hi)), columns=columns)
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(lo))  # from the footer only
    cols = {role: table.column(names[p]) for role, p in pos.items()}
    labels = {role: f"column {names[p]!r}" for role, p in pos.items()}
    raw = _read_columns(cols, path, labels, _index_locator("row", first_row))
    raw.columns = _columns_note(labels)
    return raw


# --------------------------------------------------------------------------- text sources


def _stream(path: str) -> Any:
    try:
        return pa.input_stream(path, compression="detect")
    except (OSError, pa.ArrowInvalid) as e:
        raise _fail(path, None, f"cannot open: {e}") from None


def _damaged(path: str, e: Exception, text_bytes: int, line: int | None) -> IngestError:
    """A read that failed part-way (a truncated or corrupt compressed stream, an I/O error)."""
    gz = path.lower().endswith(_COMPRESSION_SUFFIXES)
    at = f" after {text_bytes:,} bytes of text" if text_bytes else ""
    return _fail(path, f"line {line}" if line is not None and text_bytes else None, (
        f"cannot read the {'compressed ' if gz else ''}data{at} ({e}): "
        + ("the file is truncated or damaged (check it with e.g. gzip -t)" if gz else "an I/O error")))


def _blocks(path: str, start: int, block_bytes: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) blocks of the decompressed text from ``start`` to ``end`` (default: the end),
    each ending at a newline.  ``end`` must be a line start (see :func:`part_byte_range`)."""
    offset, carry, lines = start, b"", 0
    try:
        with _stream(path) as f:
            if f.seekable():
                f.seek(start)
            else:
                todo = start
                while todo > 0:  # skip the header (compressed streams cannot seek)
                    got = len(f.read(min(todo, block_bytes)))
                    if not got:
                        return
                    todo -= got
            while True:
                want = block_bytes if end is None else min(block_bytes, end - offset - len(carry))
                chunk = f.read(want) if want > 0 else b""
                if not chunk:
                    if carry:
                        yield offset, carry
                    return
                buf = carry + chunk if carry else chunk
                cut = buf.rfind(b"\n") + 1
                if cut == 0:
                    carry = buf  # a line longer than a block: keep reading
                    continue
                yield offset, buf[:cut]
                lines += buf.count(b"\n", 0, cut)
                offset += cut
                carry = buf[cut:]
    except (OSError, pa.ArrowInvalid) as e:  # only the stream's own reads land here, never the consumer's
        raise _damaged(path, e, offset + len(carry), lines + 1 if start == 0 else None) from None


def _next_line_start(path: str, pos: int) -> int:
    """The first line start at or after byte ``pos`` of an uncompressed file."""
    size = os.path.getsize(path)
    if pos <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(pos - 1)
        at = pos - 1
        while at < size:
            buf = f.read(1 << 16)
            i = buf.find(b"\n")
            if i >= 0:
                return at + i + 1
            at += len(buf)
    return size


def part_byte_range(path: str, data_start: int, part: int, n_parts: int) -> tuple[int, int]:
    """[start, end) bytes of part ``part`` of ``n_parts`` of an uncompressed text file's entry lines.

    The lines from ``data_start`` on are cut into ``n_parts`` byte ranges of equal size; a
    line belongs to the part holding its first byte, so the parts cover every line once.
    """
    size = os.path.getsize(path)
    cut = lambda k: data_start + (size - data_start) * k // n_parts  # noqa: E731
    start = data_start if part == 0 else max(_next_line_start(path, cut(part)), data_start)
    end = size if part == n_parts - 1 else max(_next_line_start(path, cut(part + 1)), start)
    return start, end


def _count_newlines(path: str, end: int) -> int:
    """Newlines in the first ``end`` bytes (names the line of an error inside a part)."""
    n = 0
    for _, block in _blocks(path, 0, _BLOCK_BYTES, end):
        n += block.count(b"\n")
    return n


_WS_LUT = np.arange(256, dtype=np.uint8)
_WS_LUT[[9, 11, 12]] = 32  # tab, \v, \f -> space
_WS_LUT[13] = 10  # \r -> \n (an extra empty line for \r\n; empty lines are skipped)


def _normalise_whitespace(block: bytes) -> np.ndarray:
    """Edge-list text -> single-space-separated lines without comments, as uint8 bytes.

    pyarrow splits on one delimiter character, so runs of blanks, leading blanks
    and ``#`` / ``%`` comment lines are removed here with whole-array NumPy
    operations (three compactions; no per-line Python).
    """
    a = _WS_LUT[np.frombuffer(block, dtype=np.uint8)]
    nl = a == 10
    sp = a == 32
    tok = ~(nl | sp)
    # 1) A blank survives only as the last of its run and only before a token.
    keep = ~sp
    keep[:-1] |= sp[:-1] & tok[1:]
    a = a[keep]
    # 2) That leaves at most one blank at a line start; drop it.
    lead = a == 32
    lead[1:] &= a[:-1] == 10
    a = a[~lead]
    # 3) Comment lines: the first byte of the line is '#' or '%'; drop through the newline.
    nl_pos = np.flatnonzero(a == 10)
    starts = np.concatenate(([0], nl_pos + 1))
    starts = starts[starts < len(a)]
    comment = starts[(a[starts] == 35) | (a[starts] == 37)]
    if len(comment):
        ends = np.searchsorted(nl_pos, comment)  # the newline closing each comment line
        stop = np.where(ends < len(nl_pos), nl_pos[np.minimum(ends, len(nl_pos) - 1)] + 1, len(a))
        delta = np.zeros(len(a) + 1, dtype=np.int8)
        delta[comment] += 1
        delta[stop] -= 1
        a = a[np.cumsum(delta[:-1], dtype=np.int8) == 0]
    return a


@dataclasses.dataclass(frozen=True)
class _Dialect:
    """How one text file is split into fields."""

    edgelist: bool
    sep: str  # "," / "\t" / ... for CSV; " " after whitespace normalisation for edge lists

    def is_data(self, line: str) -> bool:
        """Whether a physical line is an entry (mirrors what pyarrow / normalisation keep)."""
        if self.edgelist:
            s = line.strip(_WS)
            return bool(s) and s[0] not in "#%"
        return line.rstrip("\r\n") != ""

    def split(self, line: str) -> list[str]:
        if self.edgelist:
            return _WS_SPLIT.split(line.strip(_WS))
        return next(csv.reader([line.rstrip("\r\n")], delimiter=self.sep))


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _peek(path: str, edgelist: bool, limit: int = 1 << 20) -> list[tuple[int, int, str]]:
    """Up to two data lines as (1-based line number, byte offset just past it, text)."""
    dialect = _Dialect(edgelist, " " if edgelist else ",")
    out: list[tuple[int, int, str]] = []
    chunks, got = [], 0
    with _stream(path) as f:
        while got < limit:  # in pieces: a damaged stream still gives its first lines (the parse names the line)
            try:
                piece = f.read(min(1 << 16, limit - got))
            except (OSError, pa.ArrowInvalid) as e:
                if not got:
                    raise _damaged(path, e, 0, None) from None
                break
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
    head = b"".join(chunks)
    try:
        guards.sniff_text(head)
    except guards.Refused as e:
        raise _fail(path, e.where, e.problem) from None
    offset = 0
    for lineno, raw in enumerate(head.split(b"\n"), start=1):
        end = offset + len(raw) + 1
        offset = end
        if end > len(head) and len(head) == limit:
            break  # a line cut by the peek limit
        text = raw.decode("utf-8", "replace")
        if dialect.is_data(text):
            try:  # the header (or first entry) must be text: names read through "replace" would not match
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _fail(path, f"line {lineno} ({text.rstrip(_WS)!r})",
                            f"invalid UTF-8 (byte 0x{raw[e.start]:02x}); alsx reads UTF-8 text") from None
            out.append((lineno, min(end, len(head)), text))
            if len(out) == 2:
                break
    return out


_TYPES = {"int": pa.int64(), "str": pa.string(), "float": pa.float64(), "bool": pa.bool_()}


def _field_problem(field: str, typ: str) -> str | None:
    """Why pyarrow would refuse ``field`` as ``typ`` (None if it is fine)."""
    if typ == "int":
        if not _INT_RE.match(field):
            return "is not an integer"
        if not -(2**63) <= int(field) < 2**63:
            return "does not fit in int64"
    elif typ == "float":
        if "_" in field or not _is_number(field):
            return "is not a number"
    elif typ == "bool":
        if field.strip().lower() not in _BOOL_TEXT:
            return "is not a bool (true/false/1/0)"
    return None


class _StringIds(Exception):
    """Raised inside a text pass when an id column turns out not to be integers."""

    def __init__(self, role: str) -> None:
        self.role = role


@dataclasses.dataclass
class _TextLayout:
    """Where the entries of one text file are; enough to re-read any block later."""

    path: str
    dialect: _Dialect
    data_start: int  # byte offset of the first entry line (after any header)
    header_lines: int  # physical lines before data_start; -1: not counted yet (see lines_before)
    n_fields: int
    pos: dict[str, int]  # role -> field number
    labels: dict[str, str]
    types: dict[str, str]  # role -> "int" / "str" / "float" / "bool"
    data_end: int | None = None  # end of the part read (None: the end of the file)

    def lines_before(self) -> int:
        """Physical lines before data_start; for a part of the file counted on first use
        (only an error message needs it, so a process never reads the bytes before its part)."""
        if self.header_lines < 0:
            self.header_lines = _count_newlines(self.path, self.data_start)
        return self.header_lines


def _explain_block(block: bytes, lines_before: int, lay: _TextLayout) -> tuple[int, str, str, str | None] | None:
    """The first line of ``block`` pyarrow would refuse: (line number, text, problem, role)."""
    for k, raw in enumerate(block.split(b"\n")):
        lineno = lines_before + k + 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return lineno, raw.decode("utf-8", "replace"), "invalid UTF-8", None
        if not lay.dialect.is_data(line):
            continue
        text = line.rstrip("\r\n")
        fields = lay.dialect.split(line)
        if len(fields) != lay.n_fields:
            return lineno, text, f"expected {lay.n_fields} fields, got {len(fields)}", None
        for role, p in lay.pos.items():
            why = _field_problem(fields[p], lay.types[role])
            if why:
                what = {"row": "row id", "col": "column id", "is_test": "is_test flag"}.get(role, role)
                return lineno, text, f"{what} {fields[p]!r} in {lay.labels[role]} {why}", role
    return None


def _parse_text(lay: _TextLayout, ids: str) -> tuple[dict[str, list], list[tuple[int, int]]]:
    """One pass over the file: per-role column pieces, and (first entry, lines before) per block.

    Raises:
      _StringIds: an integer-typed id column holds something else and ids != "index".
      IngestError: any other malformed line.
    """
    path = lay.path
    internal = [f"c{i}" for i in range(lay.n_fields)]  # header names may repeat or be empty
    used = [internal[p] for p in dict.fromkeys(lay.pos.values())]
    convert = pacsv.ConvertOptions(
        column_types={internal[p]: _TYPES[lay.types[r]] for r, p in lay.pos.items()},
        include_columns=used,
        null_values=[],  # an empty field is an error, never a silent null
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        true_values=["true", "True", "TRUE", "1"],
        false_values=["false", "False", "FALSE", "0"],
    )
    parse = pacsv.ParseOptions(
        delimiter=lay.dialect.sep,
        quote_char=False if lay.dialect.edgelist else '"',
        newlines_in_values=False,  # one physical line = one entry, so line numbers stay exact
        ignore_empty_lines=True,
    )
    read = pacsv.ReadOptions(column_names=internal, block_size=8 << 20)
    pieces: dict[str, list] = {role: [] for role in lay.pos}
    blocks: list[tuple[int, int]] = []
    n_entries, rel = 0, 0  # rel: lines since data_start
    for _, block in _blocks(path, lay.data_start, _BLOCK_BYTES, lay.data_end):
        data = _normalise_whitespace(block) if lay.dialect.edgelist else block
        table = None
        if len(data):
            try:
                table = pacsv.read_csv(pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert)
            except pa.ArrowInvalid as e:
                found = _explain_block(block, 0, lay)  # line numbers within the block
                if found is not None and found[3] in ("row", "col") and ids != "index" and lay.types[found[3]] == "int":
                    raise _StringIds(found[3]) from None
                lines_before = lay.lines_before() + rel  # only now: counting may read the bytes before a part
                if found is None:  # our scan disagrees with pyarrow: still name the file and lines
                    last = lines_before + block.count(b"\n")
                    raise _fail(path, f"lines {lines_before + 1}-{last}", f"unparseable ({e})") from None
                lineno, text, problem, role = found
                lineno += lines_before
                if role in ("row", "col"):
                    problem += (" (--ids index needs non-negative integer indices; pass --ids map (ids='map') for "
                                "other ids)")
                raise _fail(path, f"line {lineno} ({text!r})", problem) from None
        blocks.append((n_entries, rel))
        if table is not None and table.num_rows:
            for role, p in lay.pos.items():
                c = table.column(internal[p])
                if lay.types[role] == "str":
                    pieces[role].extend(c.chunks)
                elif role in ("row", "col"):
                    pieces[role].append(_narrow(c.to_numpy()))
                else:
                    pieces[role].append(c.to_numpy(zero_copy_only=False))
            n_entries += table.num_rows
        rel += block.count(b"\n")
    return pieces, blocks


def _text_locator(lay: _TextLayout, blocks: list[tuple[int, int]]) -> Location:
    entry_starts = np.array([b[0] for b in blocks], dtype=np.int64)

    def locate(positions: Sequence[int]) -> list[str]:
        """Re-reads only the blocks holding ``positions`` to name their lines (error path only)."""
        want: dict[int, dict[int, int]] = {}  # block -> {data line within block: position}
        for p in positions:
            b = int(np.searchsorted(entry_starts, p, side="right") - 1)
            want.setdefault(b, {})[int(p) - blocks[b][0]] = int(p)
        found: dict[int, str] = {}
        for b, (_, block) in enumerate(_blocks(lay.path, lay.data_start, _BLOCK_BYTES, lay.data_end)):
            if b in want:
                j = 0
                for k, raw in enumerate(block.split(b"\n")):
                    line = raw.decode("utf-8", "replace")
                    if not lay.dialect.is_data(line):
                        continue
                    if j in want[b]:
                        found[want[b][j]] = f"line {lay.lines_before() + blocks[b][1] + k + 1} ({line.rstrip(_WS)!r})"
                    j += 1
            if b >= max(want):
                break
        return [found.get(int(p), f"entry {int(p)}") for p in positions]

    return locate


def _read_text(path: str, *, fmt: str, refs: dict, sep: str | None, header, ids: str, square: bool,
               part: tuple[int, int] | None = None, str_roles: tuple[str, ...] = ()) -> _Raw:
    if fmt == "edgelist" and sep is not None:
        raise UsageError("edge lists are whitespace-separated; sep= applies to CSV (fmt='csv', --format csv)")
    peek = _peek(path, edgelist=fmt == "edgelist")
    if not peek:
        raise _fail(path, None, "no entries (the file is empty or only comments)")
    if fmt == "txt":  # '#'/'%' comments or no comma: a whitespace edge list; otherwise CSV
        first = peek[0][2].lstrip(_WS)
        fmt = "csv" if sep is not None or ("," in first and first[:1] not in "#%") else "edgelist"
        if fmt == "edgelist":
            peek = _peek(path, edgelist=True)
    edgelist = fmt == "edgelist"
    dialect = _Dialect(edgelist, " " if edgelist else (sep if sep is not None else ("\t" if fmt == "tsv" else ",")))
    if len(dialect.sep) != 1:
        raise UsageError(f"sep must be one character, got {sep!r}")

    first_line, first_end, first_text = peek[0]
    fields = dialect.split(first_text)
    first_where = f"line {first_line} ({first_text.rstrip(_WS)!r})"
    named = {role: r for role, r in refs.items() if isinstance(r, str)}
    if header == "infer":  # see load_interactions: names need a header; else CSV: no number in the first line
        header = bool(named) or (not edgelist and not any(_is_number(f) for f in fields))
    if header:
        names = [n.strip() for n in fields]
        header_lines, data_start = first_line, first_end
        log.info("%s: header on line %d: %s", path, first_line, names)
        missing = [role for role, r in named.items() if r not in names]
        numbers = [f for f in fields if _is_number(f)]
        if missing and numbers:  # the "header" is an entry: names cannot refer to anything
            role = missing[0]
            raise _fail(path, first_where, (
                f"{_FLAGS[role]} {named[role]!r} names a column, but the first line is not a header (it holds "
                f"numbers, e.g. {numbers[0]!r}): add a header line naming the columns, or give them by 0-based "
                f"number ({_FLAGS[role]} 0 ...; this line has {len(fields)} fields)"))
        described = f"the header (line {first_line}) names the columns {names}"
    else:
        if named:
            role = next(iter(named))
            raise _fail(path, None, f"{_FLAGS[role]} {named[role]!r} is a column name but header=False; give "
                                    "columns by 0-based number")
        names = [str(i) for i in range(len(fields))]
        header_lines, data_start = 0, 0
        described = f"there is no header, and {first_where} has {len(fields)} fields"

    defaults = {"row": 0, "col": 1}
    if edgelist and len(names) >= 3:
        defaults["value"] = 2  # src dst weight
    pos = _resolve_names(names, refs, path, defaults, where=first_where if header else None, described=described)
    lay = _TextLayout(
        path=path,
        dialect=dialect,
        data_start=data_start,
        header_lines=header_lines,
        n_fields=len(names),
        pos=pos,
        labels={role: (f"column {names[p]!r}" if header else f"column {p}") for role, p in pos.items()},
        types={"row": "int", "col": "int", "value": "float", "timestamp": "int", "is_test": "bool"},
    )
    if part is not None:  # only this part's lines (see part_byte_range)
        if path.lower().endswith(_COMPRESSION_SUFFIXES):
            raise _fail(path, None, "a compressed text file cannot be split between processes (its bytes cannot be "
                        "addressed without decompressing all before them); decompress it, convert it to Parquet, or "
                        "build a dataset folder (alsx webgraph build)")
        start, end = part_byte_range(path, data_start, *part)
        lay.header_lines = header_lines if start == data_start else -1
        lay.data_start, lay.data_end = start, end
    for role in str_roles:
        lay.types[role] = "str"
    inferred = list(str_roles)
    while True:  # integer ids first (compact); a column with other ids is re-read as strings
        try:
            pieces, blocks = _parse_text(lay, ids)
            break
        except _StringIds as e:
            switch = ("row", "col") if square else (e.role,)  # a shared vocabulary needs one id type
            for role in switch:
                lay.types[role] = "str"
                inferred.append(role)
            log.info("%s: non-integer ids in %s; re-reading them as strings", path, ", ".join(switch))
    locate = _text_locator(lay, blocks)

    def joined(role: str) -> Any:
        if role not in pos:
            return None
        parts = pieces[role]
        if lay.types[role] == "str":
            return pa.chunked_array(parts, type=_TYPES["str"])
        if not parts:
            return np.zeros(0, dtype={"row": np.int32, "col": np.int32, "value": np.float64, "timestamp": np.int64, "is_test": bool}[role])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    raw = _Raw(
        source=path,
        rows=joined("row"),
        cols=joined("col"),
        values=joined("value"),
        timestamps=joined("timestamp"),
        is_test=joined("is_test"),
        labels=lay.labels,
        locate=locate,
        inferred_str=tuple(dict.fromkeys(inferred)),
        columns=_columns_note(lay.labels, f"header line {first_line}" if header else "no header line"),
    )
    for role, c in (("row", raw.rows), ("col", raw.cols)):  # an empty string id is a missing field
        if isinstance(c, pa.ChunkedArray) and len(c):
            empty = pc.equal(pc.utf8_length(c), 0)
            if pc.any(empty).as_py():
                i = _first(empty.to_numpy(zero_copy_only=False))
                raise _fail(path, locate([i])[0], f"empty {role} id in {lay.labels[role]}")
    return raw


# --------------------------------------------------------------------------- validation and assembly


def _is_str(c: IdColumn) -> bool:
    return isinstance(c, pa.ChunkedArray) or c.dtype.kind == "U"


def _build_vocab(cols: list[IdColumn]) -> tuple[Vocab, list[np.ndarray]]:
    """One sorted vocabulary over all given columns; int32 codes per column."""
    if any(_is_str(c) for c in cols):
        # Strings: hash-based unique and lookup in arrow (O(n)); only the distinct ids are sorted.
        arrs = []
        for c in cols:
            if isinstance(c, pa.ChunkedArray):
                arrs.append(c.cast(pa.large_string()))
            elif c.dtype.kind == "U":
                arrs.append(pa.chunked_array([pa.array(c, type=pa.large_string())]))
            else:  # ints sharing a vocabulary with strings (square graphs): use their decimal text
                arrs.append(pa.chunked_array([pa.array(c).cast(pa.large_string())]))
        allc = pa.chunked_array([ch for a in arrs for ch in a.chunks], type=pa.large_string())
        uniq = np.sort(pc.unique(allc).to_numpy(zero_copy_only=False).astype(str))
        vocab = Vocab._from_sorted_unique(uniq)
        value_set = pa.array(uniq, type=pa.large_string())
        codes = [pc.index_in(a, value_set=value_set).to_numpy().astype(np.int32) for a in arrs]
        return vocab, codes
    if len(cols) == 1:
        vocab, codes = Vocab.from_ids(cols[0])
        return vocab, [codes]
    both = np.concatenate([c.astype(np.int64, copy=False) for c in cols])
    vocab, codes = Vocab.from_ids(both)
    return vocab, [codes[: len(cols[0])], codes[len(cols[0]) :]]


def _check_index(c: IdColumn, role: str, raw: _Raw, limit: int | None, declared: tuple[int, int] | None) -> np.ndarray:
    """Validates an 'index'-mode column: integers, >= 0, < limit (declared size)."""
    label = raw.labels[role]
    if _is_str(c):
        arr = c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([pa.array(c)])
        ok = pc.match_substring_regex(arr, r"^\s*[0-9]+\s*$").to_numpy(zero_copy_only=False)
        if not ok.all():
            i = _first(~ok)
            raise _fail(
                raw.source,
                raw.locate([i])[0],
                f"{role} id {arr[i].as_py()!r} in {label} is not a non-negative integer index "
                "(--ids index; pass --ids map (ids='map') for arbitrary ids)",
            )
        c = _narrow(pc.cast(pc.utf8_trim_whitespace(arr), pa.int64()).to_numpy())
    if c.size and c.min() < 0:
        i = _first(c < 0)
        raise _fail(raw.source, raw.locate([i])[0], f"negative {role} index {c[i]} in {label} (indices must be >= 0; "
                                                    "pass --ids map (ids='map') for arbitrary integer ids)")
    if limit is not None and c.size and c.max() >= limit:
        i = _first(c >= limit)
        raise _fail(raw.source, raw.locate([i])[0], f"{role} index {c[i]} in {label} is outside the declared shape {declared}")
    if c.size and c.max() > _INT32_MAX:
        i = _first(c > _INT32_MAX)
        raise _fail(raw.source, raw.locate([i])[0], f"{role} index {c[i]} in {label} does not fit in int32; pass "
                                                    "--ids map (ids='map') to number the distinct ids 0..n-1")
    return c.astype(np.int32, copy=False)


def _encode_ids(raw: _Raw, mode: str, declared: tuple[int, int] | None, square: bool, build_vocab=None,
                max_index=None, n_entries: int | None = None, declared_by: str = "shape=",
                available: int | None = None):
    """Validated int32 row / column codes: (rows, cols, row_vocab, col_vocab, n_rows, n_cols).

    mode "index" keeps indices (checked against ``declared``; the shape is otherwise the
    largest index + 1, by ``max_index``); "map" encodes through vocabularies built by
    ``build_vocab`` (default :func:`_build_vocab`).  Both are swappable so that processes
    reading parts of one file agree on one vocabulary / shape (``alsx.data.partitioned``);
    ``n_entries`` is then the entries of every part and ``available`` the least RAM any
    process has (so that all decide alike).  Before returning, an index range or a
    declared shape is checked by :func:`alsx.data.guards.index_space_problem` (nothing of that
    size exists yet).
    """
    src = raw.source
    n_entries = len(raw.rows) if n_entries is None else n_entries
    build_vocab = _build_vocab if build_vocab is None else build_vocab
    max_index = (lambda a: int(a.max()) if a.size else -1) if max_index is None else max_index
    if mode == "index":
        lim_r = lim_c = None
        if declared is not None:
            lim_r, lim_c = declared
        rows = _check_index(raw.rows, "row", raw, lim_r, declared)
        cols = _check_index(raw.cols, "col", raw, lim_c, declared)
        if declared is not None:
            n_rows, n_cols = declared
        else:
            n_rows, n_cols = max_index(rows) + 1, max_index(cols) + 1
            if square:
                n_rows = n_cols = max(n_rows, n_cols)
        _guard_space(raw, rows, cols, n_rows, n_cols, declared is None, n_entries, declared_by, available)
        for v, size, what in ((raw.row_vocab, n_rows, "row_ids"), (raw.col_vocab, n_cols, "col_ids")):
            if v is not None and len(v) != size:
                raise _fail(src, None, f"{what} holds {len(v)} ids but the matrix has {size} of them")
        return rows, cols, raw.row_vocab, raw.col_vocab, n_rows, n_cols
    if square:
        vocab, (rows, cols) = build_vocab([raw.rows, raw.cols])
        row_vocab = col_vocab = vocab
    else:
        row_vocab, (rows,) = build_vocab([raw.rows])
        col_vocab, (cols,) = build_vocab([raw.cols])
    n_rows, n_cols = len(row_vocab), len(col_vocab)
    if declared is not None:
        if declared[0] < n_rows or declared[1] < n_cols:
            raise _fail(src, None, f"declared shape {declared} is smaller than the data's {n_rows} x {n_cols} distinct ids")
        n_rows, n_cols = declared
        _guard_space(raw, rows, cols, n_rows, n_cols, False, n_entries, declared_by, available)
    return rows, cols, row_vocab, col_vocab, n_rows, n_cols


def _guard_space(raw: _Raw, rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, derived: bool,
                 n_entries: int, declared_by: str, available: int | None) -> None:
    """The dense-index and memory rules of :mod:`alsx.data.guards` for an ``n_rows x n_cols`` matrix."""

    def where_max(size: int) -> Callable[[], str | None]:
        def find() -> str | None:  # the largest index may sit in the other column (square) or another part
            for c in (rows, cols):
                hit = np.flatnonzero(c == size - 1)[:1] if c.size else []
                if len(hit):
                    return raw.locate([int(hit[0])])[0]
            return None

        return find

    extents = [guards.Extent("row", int(n_rows), derived, raw.labels["row"], where_max(n_rows)),
               guards.Extent("col", int(n_cols), derived, raw.labels["col"], where_max(n_cols))]
    try:
        guards.index_space_problem(extents, n_entries, declared_by, available=available)
    except guards.Refused as e:
        raise _fail(raw.source, e.where, e.problem) from None


def _mixed_ids_error(raw: _Raw, role: str, n_int: int, n: int, first: int) -> IngestError:
    """The ``--ids auto`` refusal of a text id column mostly, but not only, of integers.

    ``first``: this part's first non-integer token, or -1 when it is in another process's part.
    """
    col = raw.rows if role == "row" else raw.cols
    what = {"row": "row id", "col": "column id"}[role]
    bad = n - n_int
    if first >= 0:
        where = raw.locate([first])[0]
        head = (f"{what} {col[first].as_py()!r} in {raw.labels[role]} is not an integer, but {n_int:,} of the "
                f"column's {n:,} ids are" + (f" ({bad:,} are not)" if bad > 1 else ""))
    else:
        where = None
        head = (f"{bad:,} of the {n:,} {what}s in {raw.labels[role]} are not integers (in another process's part "
                "of the file; its error names the line), the others are")
    return _fail(raw.source, where, (
        f"{head}. With --ids auto an id column is read as integers only when every id is one (read as strings, "
        "every id would be renumbered in string order): fix the line, or pass --ids map (ids='map') if the ids "
        "really are strings"))


def _finish(raw: _Raw, *, shape, ids, square, duplicates, allow_negative, keep_zeros) -> tuple[Interactions, IngestSummary]:
    src = raw.source
    n = len(raw.rows)
    if n == 0:
        raise _fail(src, None, "no entries")
    declared = shape if shape is not None else raw.shape
    if square and declared is not None and declared[0] != declared[1]:
        raise _fail(src, None, f"--square (square=True) but the declared shape {declared} is not square")

    mode = ids
    if mode == "auto":
        for role in raw.inferred_str:  # text id columns that held a non-integer token (guards.mixed_int_ids)
            n_int, n_tok, first = guards.mixed_int_ids(raw.rows if role == "row" else raw.cols)
            if guards.is_mixed(n_int, n_tok):
                raise _mixed_ids_error(raw, role, n_int, n_tok, first)
        mode = "index" if raw.native_index or not (_is_str(raw.rows) or _is_str(raw.cols)) else "map"

    declared_by = "shape=" if shape is not None else f"the 'shape' of {src}"
    rows, cols, row_vocab, col_vocab, n_rows, n_cols = _encode_ids(raw, mode, declared, square, declared_by=declared_by)
    del raw.rows, raw.cols  # drop the raw id columns as soon as they are encoded

    values, ts, test = raw.values, raw.timestamps, raw.is_test
    pos_map = None  # kept entry -> original position, once zeros are dropped
    dropped = 0
    if values is not None:
        values = _checked_values(raw, allow_negative)
        if not keep_zeros:
            nz = values != 0
            dropped = n - int(nz.sum())
            if dropped:
                if dropped == n:
                    raise _fail(src, None, f"all {n} entries have value 0 and keep_zeros=False")
                pos_map = np.flatnonzero(nz)
                rows, cols, values = rows[nz], cols[nz], values[nz]
                ts = None if ts is None else ts[nz]
                test = None if test is None else test[nz]

    def where(positions: Sequence[int]) -> list[str]:
        orig = [int(pos_map[p]) if pos_map is not None else int(p) for p in positions]
        return raw.locate(orig)

    def pair_name(i: int) -> str:
        r = row_vocab.ids[rows[i]] if mode == "map" else rows[i]
        c = col_vocab.ids[cols[i]] if mode == "map" else cols[i]
        return f"(row {r.item()!r}, col {c.item()!r})"

    rows, cols, values, ts, test, merged = _sort_dedupe(rows, cols, n_cols, values, ts, test, duplicates, where, pair_name, src)
    if values is None:
        values = np.ones(len(rows), dtype=np.float32)

    inter = Interactions(
        rows=rows,
        cols=cols,
        values=values,
        shape=(int(n_rows), int(n_cols)),
        row_vocab=row_vocab,
        col_vocab=col_vocab,
        timestamps=ts,
        is_test=test,
    )
    summary = IngestSummary(
        source=src,
        rows_read=n,
        kept=inter.nnz,
        merged_duplicates=merged,
        dropped_zeros=dropped,
        rejected=0,
        n_rows=int(n_rows),
        n_cols=int(n_cols),
        columns=raw.columns,
    )
    log.info("%s", summary)
    return inter, summary


def _checked_values(raw: _Raw, allow_negative: bool) -> np.ndarray:
    """raw.values as float32; a non-finite, negative (unless allowed) or float32-overflowing
    value is an error naming its line."""
    src, values = raw.source, raw.values
    bad = ~np.isfinite(values)
    if bad.any():
        i = _first(bad)
        raise _fail(src, raw.locate([i])[0], f"value {values[i].item()!r} in {raw.labels['value']} is not finite")
    if not allow_negative and (values < 0).any():
        i = _first(values < 0)
        raise _fail(src, raw.locate([i])[0], (
            f"negative value {values[i].item()!r} in {raw.labels['value']}: values must be >= 0 (the confidence is "
            "1 + alpha * value; library callers may pass allow_negative=True to accept them)"))
    with np.errstate(over="ignore"):  # overflow is reported below with its line
        v32 = values.astype(np.float32, copy=False)
    if not np.isfinite(v32).all():
        i = _first(~np.isfinite(v32))
        raise _fail(src, raw.locate([i])[0], f"value {values[i].item()!r} in {raw.labels['value']} overflows float32")
    return v32


def _first_duplicate(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> tuple[int, int]:
    """(earlier, later) positions of the first entry, in input order, that repeats a pair."""
    key = rows.astype(np.int64) * np.int64(n_cols) + cols
    order = np.argsort(key, kind="stable")
    ks = key[order]
    dup = ks[1:] == ks[:-1]
    later = int(order[1:][dup].min())
    earlier = _first(key == key[later])
    return earlier, later


def _sort_dedupe(rows, cols, n_cols, values, ts, test, duplicates, where, pair_name, src):
    """Sorts entries by (row, col) and merges repeated pairs.

    Args:
      rows, cols: int32 [n]; values float32 [n] or None (binary); ts int64 [n] or None;
        test bool [n] or None.

    Returns:
      (rows, cols, values, ts, test, merged) with unique, sorted pairs.
    """
    n = len(rows)
    # Already strictly increasing (the usual case for prepared .npz files): nothing to do.
    if n < 2 or np.all((rows[1:] > rows[:-1]) | ((rows[1:] == rows[:-1]) & (cols[1:] > cols[:-1]))):
        return rows, cols, values, ts, test, 0

    key = np.empty(n, dtype=np.int64)
    np.multiply(rows, np.int64(n_cols), out=key)  # one int64 key: row-major order, no lexsort copies
    key += cols
    if values is None and ts is None and test is None:
        # Binary input without extras: sort the keys themselves (much faster than argsort).
        key.sort()
        dup = key[1:] == key[:-1]
        merged = int(dup.sum())
        if merged and duplicates == "error":
            _raise_duplicate(rows, cols, n_cols, where, pair_name, src)
        if merged:
            key = key[np.concatenate(([True], ~dup))]
        del dup
        rows_out = (key // n_cols).astype(np.int32)
        np.remainder(key, n_cols, out=key)  # in place: one int64 array alive, not three
        cols_out = key.astype(np.int32)
        return rows_out, cols_out, None, None, None, merged

    order = np.argsort(key, kind="stable")  # stable: 'first' keeps the earliest line
    ks = key[order]
    del key
    dup = ks[1:] == ks[:-1]
    del ks
    merged = int(dup.sum())
    if merged and duplicates == "error":
        _raise_duplicate(rows, cols, n_cols, where, pair_name, src)
    if not merged:
        return (
            rows[order],
            cols[order],
            None if values is None else values[order],
            None if ts is None else ts[order],
            None if test is None else test[order],
            0,
        )
    starts = np.flatnonzero(np.concatenate(([True], ~dup)))  # group starts in sorted order
    del dup
    first = order[starts]  # original position of each pair's first occurrence
    if test is not None:
        t8 = test[order].view(np.uint8)
        disagree = np.minimum.reduceat(t8, starts) != np.maximum.reduceat(t8, starts)
        if disagree.any():
            g = _first(disagree)
            i = int(first[g])
            j = _first((rows == rows[i]) & (cols == cols[i]) & (test != test[i]))
            a, b = where([i, j])
            raise _fail(src, None, f"duplicate entry {pair_name(i)} at {a} and {b} disagrees on is_test")
        test = test[first]
    if duplicates == "sum":
        if values is not None:
            values = np.add.reduceat(values[order].astype(np.float64), starts).astype(np.float32)
        if ts is not None:
            ts = np.maximum.reduceat(ts[order], starts)
    else:  # first
        values = None if values is None else values[first]
        ts = None if ts is None else ts[first]
    return rows[first], cols[first], values, ts, test, merged


def _raise_duplicate(rows, cols, n_cols, where, pair_name, src) -> None:
    i, j = _first_duplicate(rows, cols, n_cols)
    a, b = where([i, j])
    raise _fail(src, None, f"duplicate entry {pair_name(i)} at {a} and {b} (--duplicates error; pass --duplicates sum "
                           "or --duplicates first to merge repeated pairs)")
