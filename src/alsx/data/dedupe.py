"""Sorting entries by (row, col) and merging repeated pairs (``--duplicates sum|first|error``)."""

from __future__ import annotations

import numpy as np

from alsx.data.raw import fail, first_index


def pair_namer(rows: np.ndarray, cols: np.ndarray, row_vocab, col_vocab, mode: str):
    """``pair_name(i)`` for :func:`sort_dedupe`'s messages: entry i of ``rows``/``cols`` [n] as the
    file spells it (its ids when ``mode`` is "map")."""

    def pair_name(i: int) -> str:
        r = row_vocab.ids[rows[i]] if mode == "map" else rows[i]
        c = col_vocab.ids[cols[i]] if mode == "map" else cols[i]
        return f"(row {r.item()!r}, col {c.item()!r})"

    return pair_name


def _first_duplicate(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> tuple[int, int]:
    """(earlier, later) positions of the first entry, in input order, that repeats a pair."""
    key = rows.astype(np.int64) * np.int64(n_cols) + cols
    order = np.argsort(key, kind="stable")
    ks = key[order]
    dup = ks[1:] == ks[:-1]
    later = int(order[1:][dup].min())
    earlier = first_index(key == key[later])
    return earlier, later


def sort_dedupe(rows, cols, n_cols, values, ts, test, duplicates, where, pair_name, src):
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
            g = first_index(disagree)
            i = int(first[g])
            j = first_index((rows == rows[i]) & (cols == cols[i]) & (test != test[i]))
            a, b = where([i, j])
            raise fail(src, None, f"duplicate entry {pair_name(i)} at {a} and {b} disagrees on is_test")
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
    raise fail(
        src,
        None,
        f"duplicate entry {pair_name(i)} at {a} and {b} (--duplicates error; pass --duplicates sum "
        "or --duplicates first to merge repeated pairs)",
    )
