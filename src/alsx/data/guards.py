"""Checks ingest runs before it allocates anything sized by the input, and the rules behind them.

Each check is a pure function that returns nothing when the input is fine and raises
:class:`Refused` (a place and a problem, which ``alsx.data.ingest`` turns into an
``IngestError`` naming the file) when it is not.

* :func:`index_space_problem` -- the matrix an index range implies.  In ``--ids index`` mode
  (and for npz / scipy input) a matrix has ``largest index + 1`` rows (columns) unless a
  shape is declared, and every row and column costs memory downstream whether or not it
  has entries (CSR offsets and counts, ``BYTES_PER_INDEX`` bytes per row and per column,
  before any embedding table).  Two rules, checked before anything of that size exists:

  1. *dense*: an extent taken from the largest index (not declared) may exceed
     ``SPARSE_MIN`` only if it is at most ``SPARSE_RATIO`` times the entries read.  A larger
     one leaves more than 15 of 16 rows empty: the ids are not 0-based indices (a timestamp
     column taken for the row id gave 1.6e9 rows for 30 entries), so it is an error
     naming the largest index and its line, suggesting ``--ids map``;
  2. *memory*: ``(n_rows + n_cols) * BYTES_PER_INDEX`` must fit in the RAM available now
     (psutil), declared shapes included.

* :func:`npz_members` -- reads only the ``.npy`` headers of an ``.npz``: a file that is not a
  zip, a member that is not an array, an object array (alsx never unpickles), a header that
  claims more bytes than its member holds (a damaged file), or arrays larger than the
  available RAM are refused before ``np.load`` allocates them.
* :func:`sniff_text` -- a binary file given as text (an npz, Parquet, gzip data without a
  ``.gz`` suffix, any file with NUL bytes), named before parsing.
* :func:`mixed_int_ids` -- the ``--ids auto`` rule for text id columns: see its docstring.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

from alsx.units import human

BYTES_PER_INDEX = 16  # CSR offsets + counts (int64 each) that consumers allocate per row and per column
SPARSE_MIN = 1 << 20  # below this an index range is cheap whatever its share of empty rows
SPARSE_RATIO = 16  # extent / entries above this: more than 15 of 16 rows would be empty
INT_TOKEN = r"^\s*-?[0-9]+\s*$"  # an integer id token, as pyarrow reads int64 text


class Refused(Exception):
    """A check failed: ``where`` (a line or row, or None) and ``problem`` for the message."""

    def __init__(self, where: str | None, problem: str) -> None:
        super().__init__(problem)
        self.where, self.problem = where, problem


def available_ram() -> int:
    """Bytes of RAM available now (psutil), the budget of the memory checks."""
    return int(psutil.virtual_memory().available)


# --------------------------------------------------------------------------- index space


@dataclasses.dataclass(frozen=True)
class Extent:
    """One side (rows or columns) of the matrix about to be formed."""

    role: str  # "row" or "col"
    size: int  # rows (columns) of the matrix
    derived: bool  # size = largest index + 1 (True) or declared (False)
    label: str  # the column, for messages ("column 0", "array 'rows'")
    where_max: Callable[[], str | None]  # the line / row of the largest index (error path only)


def index_space_problem(
    extents: list[Extent], n_entries: int, declared_by: str, *, available: int | None = None
) -> None:
    """Raises :class:`Refused` when the matrix of ``extents`` breaks the dense or memory rule.

    Args:
      extents: the row and column sides.
      n_entries: entries read (over every process of a partitioned read).
      declared_by: how a declared shape was given, for messages.
      available: the memory budget in bytes (default: :func:`available_ram`).
    """
    for e in extents:
        if e.derived and e.size > SPARSE_MIN and e.size > SPARSE_RATIO * max(n_entries, 1):
            raise Refused(
                e.where_max(),
                (
                    f"{e.role} index {e.size - 1:,} in {e.label} makes a matrix of {e.size:,} {e.role}s for "
                    f"{n_entries:,} entries (with integer ids kept as indices, every index up to the largest is a "
                    f"{e.role}): these ids are not 0-based indices; pass --ids map (ids='map') to number the distinct "
                    f"ids 0..n-1, or check that {e.label} is the {e.role} id column (--row / --col)"
                ),
            )
    n_rows, n_cols = (e.size for e in extents)
    need = (n_rows + n_cols) * BYTES_PER_INDEX
    budget = available_ram() if available is None else int(available)
    if need > budget:
        big = max(extents, key=lambda e: e.size)
        if big.derived:
            where, why = (
                big.where_max(),
                (
                    f"its {big.role}s come from the largest {big.role} index, {big.size - 1:,} "
                    f"in {big.label}; pass --ids map (ids='map') if the ids are not 0-based "
                    "indices"
                ),
            )
        else:
            where, why = None, f"its shape is declared by {declared_by}"
        raise Refused(
            where,
            (
                f"a {n_rows:,} x {n_cols:,} matrix needs at least {human(need)} ({BYTES_PER_INDEX} bytes per row and per "
                f"column, before any embedding table), over the {human(budget)} of RAM available; {why}"
            ),
        )


# --------------------------------------------------------------------------- npz


@dataclasses.dataclass(frozen=True)
class NpyInfo:
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def npz_members(path: str, wanted: Callable[[str], bool], *, available: int | None = None) -> dict[str, NpyInfo]:
    """The ``.npy`` headers of the archive at ``path`` (no array data read), checked.

    Args:
      wanted: which keys will be loaded (their sizes count against ``available``).

    Raises:
      Refused: not a zip; a member that is not a ``.npy``; an object array; a header claiming
        more data than the member holds; wanted arrays larger than ``available`` bytes.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise Refused(
            None,
            f"not an .npz archive: not a readable zip file ({e}); a truncated download or another "
            "format (pass --format to say which)",
        ) from None
    out: dict[str, NpyInfo] = {}
    fmt = np.lib.format
    with zf:
        members = zf.infolist()
        if not any(m.filename.endswith(".npy") for m in members):
            names = [m.filename for m in members][:10]
            raise Refused(None, f"a zip archive but not an .npz: it holds no .npy arrays (members: {names})")
        for m in members:
            if not m.filename.endswith(".npy"):
                continue
            key = m.filename[:-4]
            try:
                with zf.open(m) as f:
                    version = fmt.read_magic(f)
                    shape, _, dtype = (
                        fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
                    )
                    header_len = f.tell()
            except Exception as e:  # noqa: BLE001 - zlib, BadZipFile, EOF, bad magic: all mean a damaged member
                raise Refused(None, f"array {key!r} is not a readable .npy ({type(e).__name__}: {e})") from None
            if dtype.hasobject:
                raise Refused(
                    None,
                    f"array {key!r} holds Python objects (dtype {dtype}); alsx never loads pickles: "
                    "store ids as integers or fixed-width strings (e.g. np.str_)",
                )
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes > m.file_size - header_len:
                raise Refused(
                    None,
                    f"array {key!r} claims shape {shape} of {dtype} ({human(nbytes)}) but its member "
                    f"holds {human(max(m.file_size - header_len, 0))}: the file is damaged",
                )
            out[key] = NpyInfo(tuple(shape), dtype, nbytes)
    need = sum(i.nbytes for k, i in out.items() if wanted(k))
    budget = available_ram() if available is None else int(available)
    if need > budget:
        raise Refused(None, f"its arrays need {human(need)}, over the {human(budget)} of RAM available")
    return out


# --------------------------------------------------------------------------- text

_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data; name the file with a .gz suffix (e.g. data.csv.gz)"),
    (b"PK\x03\x04", "a zip archive (an .npz?); pass --format npz or name it .npz"),
    (b"PAR1", "a Parquet file; pass --format parquet or name it .parquet"),
    (b"\x93NUMPY", "a single .npy array; alsx reads .npz archives (np.savez) with 'rows' and 'cols'"),
)


def sniff_text(head: bytes) -> None:
    """Raises :class:`Refused` when the first bytes (decompressed) of a text source are binary.

    Binary: a known file signature, or a NUL byte in the first 64 KiB (no text has one).
    Text that is not UTF-8 is named line by line by the parser (comment lines may hold any bytes).
    """
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise Refused(None, f"a binary file, not text: it starts like {what}")
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        raise Refused(
            None, "a binary file, not text: it starts like bzip2-compressed data; name the file with a .bz2 suffix"
        )
    nul = head.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise Refused(
            f"line {line}", f"a binary file, not text: NUL byte at byte {nul} (pass --format if it is npz or parquet)"
        )


# --------------------------------------------------------------------------- --ids auto


def mixed_int_ids(col: pa.ChunkedArray) -> tuple[int, int, int]:
    """(integer tokens, tokens, position of the first non-integer token or -1) of a text id column.

    The ``--ids auto`` rule for a text file's id column: integers when every token is an
    integer; string ids when at most half of the tokens are integers; an error otherwise --
    a column mostly of integers with a few other tokens (``1O``, a quoted ``"0,9"``) is
    much more often a damaged line than a naming scheme, and reading it as strings would
    renumber every id in string order.  ``--ids map`` says the ids really are strings.
    """
    if len(col) == 0:
        return 0, 0, -1
    ok = pc.match_substring_regex(col, INT_TOKEN)
    n_int = int(pc.sum(ok).as_py() or 0)
    first = -1
    if n_int < len(col):
        first = int(np.argmax(~ok.to_numpy(zero_copy_only=False)))
    return n_int, len(col), first


def is_mixed(n_int: int, n: int) -> bool:
    """Some tokens are not integers, but most are (see :func:`mixed_int_ids`)."""
    return n_int < n and 2 * n_int > n
