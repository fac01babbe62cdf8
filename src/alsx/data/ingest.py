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

This module is the front; the work is done by

* the readers, one per kind of source, each returning unvalidated columns
  (:class:`~alsx.data.raw.Raw`): :mod:`alsx.data.read_text` (on
  :mod:`alsx.data.text_blocks`), :mod:`alsx.data.read_parquet` (and DataFrames),
  :mod:`alsx.data.read_npz` (and dicts, tuples, scipy matrices), sharing the column
  checks of :mod:`alsx.data.columns`;
* :mod:`alsx.data.validate` (ids, values, the matrix; rules in :mod:`alsx.data.guards`)
  and :mod:`alsx.data.dedupe` (sort, merge duplicates).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

from alsx.data.matrix import Interactions
from alsx.data.raw import ColumnRef, IdColumn, IngestError, IngestSummary, InputNotFound, Raw
from alsx.data.read_npz import read_arrays, read_npz, read_scipy
from alsx.data.read_parquet import read_frame, read_parquet
from alsx.data.read_text import read_text
from alsx.data.text_blocks import COMPRESSION_SUFFIXES, part_byte_range
from alsx.data.validate import finish
from alsx.errors import UsageError

__all__ = [
    "ColumnRef",
    "IdColumn",
    "IngestError",
    "IngestSummary",
    "InputNotFound",
    "ingest_arguments",
    "load_interactions",
    "part_byte_range",
    "read_source",
    "suffix_format",
]

FMT_BY_SUFFIX = {
    ".npz": "npz",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",  # resolved to csv or edgelist by looking at the first data line
    ".edges": "edgelist",
    ".el": "edgelist",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FORMATS = ("npz", "csv", "tsv", "edgelist", "parquet")


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
    a = ingest_arguments(**{k: v for k, v in locals().items() if k != "source"})
    raw = read_source(source, fmt=fmt, refs=a["refs"], sep=sep, header=header, ids=ids, square=square)
    return finish(
        raw,
        shape=a["shape"],
        ids=ids,
        square=square,
        duplicates=duplicates,
        allow_negative=allow_negative,
        keep_zeros=keep_zeros,
    )


def ingest_arguments(**options: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`load_interactions` by name: defaults filled in, values checked.

    Also ``refs``: role -> column reference.  For other front ends taking the same
    arguments (:func:`alsx.data.partitioned.load_partitioned`).

    Raises:
      TypeError: a keyword load_interactions does not take.
      UsageError: an argument value that cannot work.
    """
    bound = inspect.signature(load_interactions).bind(None, **options)
    bound.apply_defaults()
    a = {k: v for k, v in bound.arguments.items() if k != "source"}
    ids, duplicates, header, shape = a["ids"], a["duplicates"], a["header"], a["shape"]
    if ids not in ("auto", "index", "map"):
        raise UsageError(f"--ids (ids=) must be auto, index or map, got {ids!r}")
    if duplicates not in ("sum", "first", "error"):
        raise UsageError(f"--duplicates (duplicates=) must be sum, first or error, got {duplicates!r}")
    if header not in (True, False, "infer"):
        raise UsageError(f"header must be True, False or 'infer', got {header!r}")
    if shape is not None:
        if len(shape) != 2 or any(int(s) != s or s < 0 for s in shape):
            raise UsageError(f"shape must be two non-negative ints, got {shape!r}")
        a["shape"] = (int(shape[0]), int(shape[1]))
    a["refs"] = {role: a[role] for role in ("row", "col", "value", "timestamp", "is_test")}
    return a


def _stem(path: str) -> str:
    """The lower-case path without a compression suffix (``x.csv.gz`` -> ``x.csv``)."""
    lower = path.lower()
    return lower.rsplit(".", 1)[0] if lower.endswith(COMPRESSION_SUFFIXES) else lower


def suffix_format(path: str) -> str | None:
    """The format a path's suffix names (``x.csv.gz`` -> "csv"; ".txt" -> "txt"), or None."""
    return FMT_BY_SUFFIX.get(os.path.splitext(_stem(path))[1])


def read_source(source: Any, *, fmt, refs, sep, header, ids, square, part=None, str_roles=()) -> Raw:
    """The reader for ``source`` (by type, then ``fmt`` or the suffix) applied to it: unvalidated columns.

    ``part`` = (i, n) reads only part i of n of a file (:mod:`alsx.data.partitioned`);
    ``str_roles`` forces text id columns to be read as strings.
    """
    pd = sys.modules.get("pandas")  # a DataFrame can only exist if pandas was imported
    if pd is not None and isinstance(source, pd.DataFrame):
        return read_frame(source, refs)
    sp = sys.modules.get("scipy.sparse")
    if sp is not None and sp.issparse(source):
        return read_scipy(source, refs)
    if isinstance(source, Mapping):
        return read_arrays(source, "arrays", refs, native_index=False)
    if isinstance(source, tuple):
        if len(source) not in (2, 3):
            raise IngestError(
                f"arrays: a tuple source must be (rows, cols) or (rows, cols, values), got {len(source)} items"
            )
        return read_arrays(dict(zip(("rows", "cols", "values"), source)), "arrays", refs, native_index=False)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot read interactions from {type(source).__name__}")

    path = os.fspath(source)
    if not os.path.exists(path):
        raise InputNotFound(f"{path}: no such file")
    if os.path.isdir(path):
        raise IngestError(f"{path}: is a directory, not a data file")
    if os.path.getsize(path) == 0:
        raise IngestError(f"{path}: no entries: the file is empty (0 bytes)")
    if fmt is None:
        fmt = suffix_format(path)
        if fmt is None:
            suffix = os.path.splitext(_stem(path))[1]
            raise IngestError(
                f"{path}: cannot infer the format from suffix {suffix!r}; pass --format (fmt=) one of "
                f"{', '.join(FORMATS)}"
            )
    elif fmt not in FORMATS:
        raise UsageError(f"--format (fmt=) must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "npz":
        return read_npz(path, refs, part)
    if fmt == "parquet":
        return read_parquet(path, refs, part)
    return read_text(
        path, fmt=fmt, refs=refs, sep=sep, header=header, ids=ids, square=square, part=part, str_roles=str_roles
    )
