"""Most-popular baseline: every row gets the most frequent training columns it has not seen.

The ranking is global (columns by training count, ties lower id first), so a row's
list is the global ranking with its own history removed. That is computed for
all rows at once without materialising ``n x (k + max history)`` candidates:

  Let ``h_0 < h_1 < ...`` be the popularity ranks of a row's history. The j-th
  (0-based) rank *not* in the history is ``j + #{i : h_i - i <= j}``, because
  ``h_i - i`` is the number of free ranks before ``h_i``. ``h_i - i`` is
  non-decreasing within a row, so the count is one ``searchsorted`` on keys
  ``row * stride + (h_i - i)``.
"""

from __future__ import annotations

import numpy as np

from alsx.data.matrix import CSR, Interactions


def item_counts(train: Interactions | CSR) -> np.ndarray:
    """int64 [n_cols] number of training entries per column."""
    if isinstance(train, CSR):
        return np.bincount(train.indices, minlength=train.n_cols).astype(np.int64)
    return np.bincount(train.cols, minlength=train.shape[1]).astype(np.int64)


def popularity_ranking(counts: np.ndarray) -> np.ndarray:
    """int64 [n_cols] column ids by descending count; equal counts lower id first."""
    return np.argsort(-np.asarray(counts, dtype=np.float64), kind="stable")


def popularity_topk(train_csr_rows_to_eval: CSR, item_counts: np.ndarray, k: int) -> np.ndarray:
    """Top-k most popular columns per evaluated row, excluding the row's history.

    Args:
      train_csr_rows_to_eval: CSR [n, m] whose row i is the history (training or
        fold-in entries) of the i-th evaluated row.
      item_counts: [m] popularity of each column (e.g. :func:`item_counts` of train).
      k: results per row.

    Returns:
      int32 [n, k] column ids, most popular first (ties lower id first); ``-1`` where a
      row has fewer than k unseen columns.
    """
    if k < 1:
        raise ValueError(f"The 'k' parameter must be >= 1. Got {k!r} instead.")
    history = train_csr_rows_to_eval
    counts = np.asarray(item_counts)
    m = counts.shape[0]
    if history.n_cols != m:
        raise ValueError(f"item_counts has {m} columns but the history CSR has {history.n_cols}.")
    n = history.n_rows
    if m == 0:
        return np.full((n, k), -1, dtype=np.int32)
    order = popularity_ranking(counts)
    rank_of = np.empty(m, dtype=np.int64)
    rank_of[order] = np.arange(m)

    lengths = history.lengths()
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    stride = np.int64(max(m, k) + 1)
    # Sort each row's history by popularity rank (rows stay grouped, already in order).
    ranks = np.sort(rows * stride + rank_of[history.indices]) - rows * stride  # [nnz]
    within = np.arange(ranks.size, dtype=np.int64) - history.indptr[:-1][rows]
    free_before = ranks - within  # h_i - i, non-decreasing within a row
    keys = rows * stride + free_before

    j = np.arange(k, dtype=np.int64)[None, :]  # [1, k]
    query = np.arange(n, dtype=np.int64)[:, None] * stride + j  # [n, k]
    n_skipped = np.searchsorted(keys, query, side="right") - history.indptr[:-1][:, None]
    target = j + n_skipped  # popularity rank of the j-th unseen column
    ids = np.where(target < m, order[np.minimum(target, m - 1)], -1)
    return ids.astype(np.int32)
