"""The held-out split of a WebGraph variant: a pure function of (seed, final node ids).

Shared with the Spark job (:func:`split_keys` runs there in a pandas UDF), so both
builds hold out the same rows and the same links, whatever the chunking.
"""

from __future__ import annotations

import numpy as np


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 [n] (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split_keys(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """int64 [n] pseudo-random non-negative key of each (row, col) entry.

    The key depends only on (seed, row, col), so the history/truth split is the
    same whatever the chunking, in NumPy and in Spark (via a pandas UDF).
    """
    with np.errstate(over="ignore"):
        s = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        x = (np.asarray(rows, dtype=np.uint64) << np.uint64(32)) | np.asarray(cols, dtype=np.uint64)
        k = _splitmix64(x ^ s)
    return (k >> np.uint64(1)).astype(np.int64)  # 63 bits: fits a signed long


def select_heldout(out_degree: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Chooses the held-out rows: round(fraction * n_rows) rows among those with out-degree >= 2.

    Args:
      out_degree: int [n_rows] final out-degrees.
    Returns:
      int32 [n_heldout] sorted row ids.
    """
    eligible = np.flatnonzero(np.asarray(out_degree) >= 2)
    n = min(int(round(fraction * len(out_degree))), len(eligible))
    if n <= 0:
        return np.zeros(0, dtype=np.int32)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n, replace=False)).astype(np.int32)


def history_counts(degree: np.ndarray, history_fraction: float) -> np.ndarray:
    """int64 [n] history size per held-out row: round(f * d) clipped to [1, d - 1] (both parts non-empty)."""
    d = np.asarray(degree, dtype=np.int64)
    return np.clip(np.round(history_fraction * d).astype(np.int64), 1, np.maximum(d - 1, 1))


def history_mask(rows: np.ndarray, cols: np.ndarray, n_history: np.ndarray, seed: int) -> np.ndarray:
    """bool [n] True for entries that go to history.

    Within each row, the ``n_history[row]`` entries with the smallest
    :func:`split_keys` (ties broken by column) are history, the rest truth.

    Args:
      rows, cols: int [n] entries of complete rows (every entry of a row present).
      n_history: int [n] the history size of each entry's row.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    key = split_keys(rows, cols, seed)
    order = np.lexsort((cols, key, rows))
    sr = np.asarray(rows)[order]
    new = np.empty(len(sr), dtype=bool)
    new[0] = True
    np.not_equal(sr[1:], sr[:-1], out=new[1:])
    first = np.maximum.accumulate(np.where(new, np.arange(len(sr)), 0))
    rank = np.empty(len(sr), dtype=np.int64)
    rank[order] = np.arange(len(sr)) - first
    return rank < np.asarray(n_history)
