"""The in-memory interaction matrix: validated COO plus both CSR orientations.

Everything downstream (splits, packing, evaluation) consumes :class:`Interactions`.
Indices are dense ``0..n-1``; the optional vocabularies map them back to the
caller's ids.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from alsx.data.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class CSR:
    """Compressed sparse rows with int64 offsets (safe beyond 2**31 nonzeros).

    Attributes:
      indptr: int64 [n_rows + 1].
      indices: int32 [nnz], sorted within each row.
      values: float32 [nnz] confidences (already transformed; 1.0 for binary data).
      n_cols: number of columns.
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def lengths(self) -> np.ndarray:
        """int64 [n_rows] number of stored entries per row."""
        return np.diff(self.indptr)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.indices[s:e], self.values[s:e]


def row_ranges(indptr: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [r0, r1) of at most ``max_nnz`` entries (a longer row gets one of its own).

    The one way alsx cuts a CSR into row blocks: streaming chunks, on-disk shards, sort
    and scan blocks.

    Args:
      indptr: int64 [n_rows + 1] (may be memory-mapped; only binary-searched).
    """
    n = len(indptr) - 1
    out: list[tuple[int, int]] = []
    r = 0
    while r < n:
        r1 = int(np.searchsorted(indptr, indptr[r] + max_nnz, side="right")) - 1
        r1 = min(max(r1, r + 1), n)
        out.append((r, r1))
        r = r1
    return out


def coo_to_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int) -> CSR:
    """Builds a CSR in O(nnz) extra memory with a stable counting sort (no Python loops).

    Args:
      rows, cols: int [nnz] indices, assumed in range and free of duplicates.
      values: float32 [nnz].
    """
    rows = np.asarray(rows)
    counts = np.bincount(rows, minlength=n_rows).astype(np.int64)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # lexsort keeps column order inside a row; argsort on a combined key is cheaper in memory.
    key = rows.astype(np.int64) * np.int64(n_cols) + np.asarray(cols, dtype=np.int64)
    order = np.argsort(key, kind="stable")
    del key
    indices = np.asarray(cols)[order].astype(np.int32, copy=False)
    vals = np.asarray(values, dtype=np.float32)[order]
    return CSR(indptr=indptr, indices=indices, values=vals, n_cols=int(n_cols))


@dataclasses.dataclass(frozen=True)
class Interactions:
    """A validated sparse matrix of implicit feedback.

    Attributes:
      rows, cols: int32 [nnz] dense indices, no duplicate pairs.
      values: float32 [nnz] raw values as read (1.0 for binary input).
      shape: (n_rows, n_cols).
      row_vocab, col_vocab: external ids for each dense index, or None when the
        input's own integer indices are kept as they are.
      timestamps: optional int64 [nnz].
      is_test: optional bool [nnz] (a split given with the data).
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]
    row_vocab: Vocab | None = None
    col_vocab: Vocab | None = None
    timestamps: np.ndarray | None = None
    is_test: np.ndarray | None = None

    @property
    def nnz(self) -> int:
        return int(len(self.rows))

    def select(self, mask: np.ndarray) -> Interactions:
        """The entries where ``mask`` is True, same shape and vocabularies."""
        return dataclasses.replace(
            self,
            rows=self.rows[mask],
            cols=self.cols[mask],
            values=self.values[mask],
            timestamps=None if self.timestamps is None else self.timestamps[mask],
            is_test=None if self.is_test is None else self.is_test[mask],
        )

    def confidence(self, alpha: float | None) -> np.ndarray:
        """float32 [nnz] weights c_ui: 1 for binary use, else 1 + alpha * value (Hu et al. 2008)."""
        if alpha is None:
            return np.ones(self.nnz, dtype=np.float32)
        return (1.0 + alpha * self.values).astype(np.float32)

    def csr(self, alpha: float | None = None) -> CSR:
        return coo_to_csr(self.rows, self.cols, self.confidence(alpha), self.shape[0], self.shape[1])

    def csc(self, alpha: float | None = None) -> CSR:
        """The transpose as CSR (columns become rows)."""
        return coo_to_csr(self.cols, self.rows, self.confidence(alpha), self.shape[1], self.shape[0])
