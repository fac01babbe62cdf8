"""Validation and assembly: a reader's :class:`~alsx.data.raw.Raw` columns -> :class:`~alsx.data.matrix.Interactions`.

Ids become int32 codes (``--ids index``: checked non-negative integer indices, the
shape from the largest one or a declared one; ``--ids map``: a sorted vocabulary),
values are checked (finite, >= 0 unless allowed, float32-representable), and entries
are sorted and de-duplicated (:mod:`alsx.data.dedupe`).  Every refusal names the entry's
line or row.  The rules on index ranges and memory are :mod:`alsx.data.guards`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alsx.data import guards
from alsx.data.columns import narrow
from alsx.data.dedupe import pair_namer, sort_dedupe
from alsx.data.matrix import Interactions
from alsx.data.raw import INT32_MAX, IdColumn, IngestError, IngestSummary, Raw, fail, first_index, is_str
from alsx.data.vocab import Vocab

log = logging.getLogger("alsx.data.ingest")  # the logger name users configure, as before the split


def as_large_strings(c: IdColumn) -> pa.ChunkedArray:
    """An id column as large strings (integers by their decimal text, as a shared vocabulary needs)."""
    if isinstance(c, pa.ChunkedArray):
        return c.cast(pa.large_string())
    if c.dtype.kind == "U":
        return pa.chunked_array([pa.array(c, type=pa.large_string())])
    return pa.chunked_array([pa.array(c).cast(pa.large_string())])


def distinct_strings(arrs: list[pa.ChunkedArray]) -> pa.Array:
    """The distinct strings of large-string columns (hash-based, O(n); unsorted)."""
    return pc.unique(pa.chunked_array([ch for a in arrs for ch in a.chunks], type=pa.large_string()))


def string_codes(uniq: np.ndarray, arrs: list[pa.ChunkedArray]) -> tuple[Vocab, list[np.ndarray]]:
    """The vocabulary of the sorted distinct strings ``uniq`` and each column's int32 codes in it."""
    value_set = pa.array(uniq, type=pa.large_string())
    return Vocab.from_sorted_unique(uniq), [
        pc.index_in(a, value_set=value_set).to_numpy().astype(np.int32) for a in arrs
    ]


def build_vocab(cols: list[IdColumn]) -> tuple[Vocab, list[np.ndarray]]:
    """One sorted vocabulary over all given columns; int32 codes per column."""
    if any(is_str(c) for c in cols):
        # Strings: hash-based unique and lookup in arrow (O(n)); only the distinct ids are sorted.
        arrs = [as_large_strings(c) for c in cols]  # ints sharing a vocabulary with strings: their decimal text
        return string_codes(np.sort(distinct_strings(arrs).to_numpy(zero_copy_only=False).astype(str)), arrs)
    if len(cols) == 1:
        vocab, codes = Vocab.from_ids(cols[0])
        return vocab, [codes]
    both = np.concatenate([c.astype(np.int64, copy=False) for c in cols])
    vocab, codes = Vocab.from_ids(both)
    return vocab, [codes[: len(cols[0])], codes[len(cols[0]) :]]


def _check_index(c: IdColumn, role: str, raw: Raw, limit: int | None, declared: tuple[int, int] | None) -> np.ndarray:
    """Validates an 'index'-mode column: integers, >= 0, < limit (declared size)."""
    label = raw.labels[role]
    if is_str(c):
        arr = c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([pa.array(c)])
        ok = pc.match_substring_regex(arr, r"^\s*[0-9]+\s*$").to_numpy(zero_copy_only=False)
        if not ok.all():
            i = first_index(~ok)
            raise fail(
                raw.source,
                raw.locate([i])[0],
                f"{role} id {arr[i].as_py()!r} in {label} is not a non-negative integer index "
                "(--ids index; pass --ids map (ids='map') for arbitrary ids)",
            )
        c = narrow(pc.cast(pc.utf8_trim_whitespace(arr), pa.int64()).to_numpy())
    if c.size and c.min() < 0:
        i = first_index(c < 0)
        raise fail(
            raw.source,
            raw.locate([i])[0],
            f"negative {role} index {c[i]} in {label} (indices must be >= 0; "
            "pass --ids map (ids='map') for arbitrary integer ids)",
        )
    if limit is not None and c.size and c.max() >= limit:
        i = first_index(c >= limit)
        raise fail(
            raw.source, raw.locate([i])[0], f"{role} index {c[i]} in {label} is outside the declared shape {declared}"
        )
    if c.size and c.max() > INT32_MAX:
        i = first_index(c > INT32_MAX)
        raise fail(
            raw.source,
            raw.locate([i])[0],
            f"{role} index {c[i]} in {label} does not fit in int32; pass "
            "--ids map (ids='map') to number the distinct ids 0..n-1",
        )
    return c.astype(np.int32, copy=False)


def encode_ids(
    raw: Raw,
    mode: str,
    declared: tuple[int, int] | None,
    square: bool,
    vocab_of=None,
    max_index=None,
    n_entries: int | None = None,
    declared_by: str = "shape=",
    available: int | None = None,
):
    """Validated int32 row / column codes: (rows, cols, row_vocab, col_vocab, n_rows, n_cols).

    mode "index" keeps indices (checked against ``declared``; the shape is otherwise the
    largest index + 1, by ``max_index``); "map" encodes through vocabularies built by
    ``vocab_of`` (default :func:`build_vocab`).  Both are swappable so that processes
    reading parts of one file agree on one vocabulary / shape (``alsx.data.partitioned``);
    ``n_entries`` is then the entries of every part and ``available`` the least RAM any
    process has (so that all decide alike).  Before returning, an index range or a
    declared shape is checked by :func:`alsx.data.guards.index_space_problem` (nothing of that
    size exists yet).
    """
    src = raw.source
    n_entries = len(raw.rows) if n_entries is None else n_entries
    vocab_of = build_vocab if vocab_of is None else vocab_of
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
                raise fail(src, None, f"{what} holds {len(v)} ids but the matrix has {size} of them")
        return rows, cols, raw.row_vocab, raw.col_vocab, n_rows, n_cols
    if square:
        vocab, (rows, cols) = vocab_of([raw.rows, raw.cols])
        row_vocab = col_vocab = vocab
    else:
        row_vocab, (rows,) = vocab_of([raw.rows])
        col_vocab, (cols,) = vocab_of([raw.cols])
    n_rows, n_cols = len(row_vocab), len(col_vocab)
    if declared is not None:
        if declared[0] < n_rows or declared[1] < n_cols:
            raise fail(
                src, None, f"declared shape {declared} is smaller than the data's {n_rows} x {n_cols} distinct ids"
            )
        n_rows, n_cols = declared
        _guard_space(raw, rows, cols, n_rows, n_cols, False, n_entries, declared_by, available)
    return rows, cols, row_vocab, col_vocab, n_rows, n_cols


def _guard_space(
    raw: Raw,
    rows: np.ndarray,
    cols: np.ndarray,
    n_rows: int,
    n_cols: int,
    derived: bool,
    n_entries: int,
    declared_by: str,
    available: int | None,
) -> None:
    """The dense-index and memory rules of :mod:`alsx.data.guards` for an ``n_rows x n_cols`` matrix."""

    def where_max(size: int) -> Callable[[], str | None]:
        def find() -> str | None:  # the largest index may sit in the other column (square) or another part
            for c in (rows, cols):
                hit = np.flatnonzero(c == size - 1)[:1] if c.size else []
                if len(hit):
                    return raw.locate([int(hit[0])])[0]
            return None

        return find

    extents = [
        guards.Extent("row", int(n_rows), derived, raw.labels["row"], where_max(n_rows)),
        guards.Extent("col", int(n_cols), derived, raw.labels["col"], where_max(n_cols)),
    ]
    try:
        guards.index_space_problem(extents, n_entries, declared_by, available=available)
    except guards.Refused as e:
        raise fail(raw.source, e.where, e.problem) from None


def mixed_ids_error(raw: Raw, role: str, n_int: int, n: int, first: int) -> IngestError:
    """The ``--ids auto`` refusal of a text id column mostly, but not only, of integers.

    ``first``: this part's first non-integer token, or -1 when it is in another process's part.
    """
    col = raw.rows if role == "row" else raw.cols
    what = {"row": "row id", "col": "column id"}[role]
    bad = n - n_int
    if first >= 0:
        where = raw.locate([first])[0]
        head = (
            f"{what} {col[first].as_py()!r} in {raw.labels[role]} is not an integer, but {n_int:,} of the "
            f"column's {n:,} ids are" + (f" ({bad:,} are not)" if bad > 1 else "")
        )
    else:
        where = None
        head = (
            f"{bad:,} of the {n:,} {what}s in {raw.labels[role]} are not integers (in another process's part "
            "of the file; its error names the line), the others are"
        )
    return fail(
        raw.source,
        where,
        (
            f"{head}. With --ids auto an id column is read as integers only when every id is one (read as strings, "
            "every id would be renumbered in string order): fix the line, or pass --ids map (ids='map') if the ids "
            "really are strings"
        ),
    )


def finish(
    raw: Raw, *, shape, ids, square, duplicates, allow_negative, keep_zeros
) -> tuple[Interactions, IngestSummary]:
    src = raw.source
    n = len(raw.rows)
    if n == 0:
        raise fail(src, None, "no entries")
    declared = shape if shape is not None else raw.shape
    if square and declared is not None and declared[0] != declared[1]:
        raise fail(src, None, f"--square (square=True) but the declared shape {declared} is not square")

    mode = ids
    if mode == "auto":
        for role in raw.inferred_str:  # text id columns that held a non-integer token (guards.mixed_int_ids)
            n_int, n_tok, first = guards.mixed_int_ids(raw.rows if role == "row" else raw.cols)
            if guards.is_mixed(n_int, n_tok):
                raise mixed_ids_error(raw, role, n_int, n_tok, first)
        mode = "index" if raw.native_index or not (is_str(raw.rows) or is_str(raw.cols)) else "map"

    declared_by = "shape=" if shape is not None else f"the 'shape' of {src}"
    rows, cols, row_vocab, col_vocab, n_rows, n_cols = encode_ids(raw, mode, declared, square, declared_by=declared_by)
    del raw.rows, raw.cols  # drop the raw id columns as soon as they are encoded

    values, ts, test = raw.values, raw.timestamps, raw.is_test
    pos_map = None  # kept entry -> original position, once zeros are dropped
    dropped = 0
    if values is not None:
        values = checked_values(raw, allow_negative)
        if not keep_zeros:
            nz = values != 0
            dropped = n - int(nz.sum())
            if dropped:
                if dropped == n:
                    raise fail(src, None, f"all {n} entries have value 0 and keep_zeros=False")
                pos_map = np.flatnonzero(nz)
                rows, cols, values = rows[nz], cols[nz], values[nz]
                ts = None if ts is None else ts[nz]
                test = None if test is None else test[nz]

    def where(positions: Sequence[int]) -> list[str]:
        orig = [int(pos_map[p]) if pos_map is not None else int(p) for p in positions]
        return raw.locate(orig)

    pair_name = pair_namer(rows, cols, row_vocab, col_vocab, mode)
    rows, cols, values, ts, test, merged = sort_dedupe(
        rows, cols, n_cols, values, ts, test, duplicates, where, pair_name, src
    )
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


def checked_values(raw: Raw, allow_negative: bool) -> np.ndarray:
    """raw.values as float32; a non-finite, negative (unless allowed) or float32-overflowing
    value is an error naming its line."""
    src, values = raw.source, raw.values
    bad = ~np.isfinite(values)
    if bad.any():
        i = first_index(bad)
        raise fail(src, raw.locate([i])[0], f"value {values[i].item()!r} in {raw.labels['value']} is not finite")
    if not allow_negative and (values < 0).any():
        i = first_index(values < 0)
        raise fail(
            src,
            raw.locate([i])[0],
            (
                f"negative value {values[i].item()!r} in {raw.labels['value']}: values must be >= 0 (the confidence is "
                "1 + alpha * value; library callers may pass allow_negative=True to accept them)"
            ),
        )
    with np.errstate(over="ignore"):  # overflow is reported below with its line
        v32 = values.astype(np.float32, copy=False)
    if not np.isfinite(v32).all():
        i = first_index(~np.isfinite(v32))
        raise fail(src, raw.locate([i])[0], f"value {values[i].item()!r} in {raw.labels['value']} overflows float32")
    return v32
