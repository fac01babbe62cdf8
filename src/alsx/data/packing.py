"""Sparse rows -> fixed-shape padded blocks for the half-epoch step.

Rows are bucketed by length onto a geometric ladder of block widths so padding
stays small; each bucket is cut into batches of ``rows x width`` entries.  Rows
longer than ``max_width`` ("long" rows: web hubs, blockbuster items) are split
into sub-rows of ``max_width`` whose statistics are summed per row by segment
sums, so any row length works.

All work here is vectorised NumPy and O(nnz) memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alsx.config import Packing
from alsx.data.matrix import CSR


@dataclasses.dataclass(frozen=True)
class Block:
    """Short rows of one width, stacked over batches.

    Attributes:
      cols: int32 [n_batches, rows, width] column ids (0 where padded).
      conf: float32 [n_batches, rows, width] confidences (0 where padded).
      rows: int32 [n_batches, rows] output row ids (``n_rows`` marks an empty slot).
    """

    cols: np.ndarray
    conf: np.ndarray
    rows: np.ndarray

    @property
    def width(self) -> int:
        return self.cols.shape[2]


@dataclasses.dataclass(frozen=True)
class LongRows:
    """Rows longer than ``max_width`` as sub-rows, chunked.

    Attributes:
      cols, conf: [n_chunks, sub_rows, width] as in :class:`Block`.
      seg: int32 [n_chunks, sub_rows] slot (0..len(rows)-1) of the row each sub-row belongs to.
      rows: int32 [n_long] output row id of each slot.
    """

    cols: np.ndarray
    conf: np.ndarray
    seg: np.ndarray
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class PackedSide:
    """One side of the matrix (rows of W against columns of H), ready for the step.

    Attributes:
      blocks: one :class:`Block` per width bucket.
      long: the long rows, or None.
      counts: float32 [n_rows] stored entries per row (for the frequency-scaled regulariser).
      n_rows, n_cols: the matrix shape on this side.
      nnz: stored entries.
      padded: entries including padding (nnz / padded is the fill ratio).
    """

    blocks: tuple[Block, ...]
    long: LongRows | None
    counts: np.ndarray
    n_rows: int
    n_cols: int
    nnz: int
    padded: int

    @property
    def fill_ratio(self) -> float:
        return self.nnz / max(self.padded, 1)

    def arrays(self) -> dict:
        """The arrays as a pytree (for device_put / jit); shapes are static per side."""
        blocks = tuple((b.cols, b.conf, b.rows) for b in self.blocks)
        long = None if self.long is None else (self.long.cols, self.long.conf, self.long.seg, self.long.rows)
        return {"blocks": blocks, "long": long, "counts": self.counts}


def bucket_widths(lengths: np.ndarray, n_buckets: int, max_width: int, saving: int = 0) -> np.ndarray:
    """int64 [<= n_buckets] block widths that minimise padding for these row lengths.

    Exact dynamic programme over the distinct lengths v <= max_width (O(n_buckets * V^2)):
    a bucket (a, b] padded to width b wastes sum_{a < v <= b} count_v * (b - v).
    ``saving`` > 0 charges each width that many padded entries (it is one more compiled
    program): the result minimises padding + saving * (number of widths).
    """
    lengths = np.asarray(lengths)
    vals, counts = np.unique(lengths[(lengths > 0) & (lengths <= max_width)], return_counts=True)
    if len(vals) == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n_buckets, len(vals))
    c = np.concatenate([[0], np.cumsum(counts)]).astype(np.float64)  # C[j]: rows with length <= vals[j-1]
    s = np.concatenate([[0], np.cumsum(counts * vals)]).astype(np.float64)
    j = np.arange(1, len(vals) + 1)
    i = np.arange(len(vals))
    # cost[i, j]: bucket holding vals[i:j] padded to vals[j-1]; inf where empty (i >= j).
    cost = vals[j - 1][None, :] * (c[j][None, :] - c[i][:, None]) - (s[j][None, :] - s[i][:, None])
    cost = np.where(i[:, None] < j[None, :], cost, np.inf)
    best = cost[0].copy()  # best[j-1]: cheapest cover of vals[:j] with the buckets so far
    back = []  # back[m][j-1]: start of the last bucket with m+2 buckets, -1 when fewer were better
    best_by_count = [best[-1]]  # [m]: least padding of all lengths with at most m + 1 buckets
    for _ in range(1, k):
        total = best[:-1][:, None] + cost[1:]  # previous buckets cover vals[:i], i >= 1
        arg = np.argmin(total, axis=0)
        new = total[arg, np.arange(len(vals))]
        better = new < best
        back.append(np.where(better, arg + 1, -1))
        best = np.where(better, new, best)
        best_by_count.append(best[-1])
    if saving > 0:  # the bucket count with least padding + saving per width (the fewest on ties)
        back = back[: int(np.argmin(np.asarray(best_by_count) + saving * np.arange(1, k + 1)))]
    widths, end, m = [], len(vals), len(back)
    while True:
        if m > 0 and back[m - 1][end - 1] < 0:
            m -= 1
            continue
        widths.append(int(vals[end - 1]))
        if m == 0:
            break
        end = int(back[m - 1][end - 1])
        m -= 1
    return np.asarray(sorted(widths), dtype=np.int64)


def side_widths(lengths: np.ndarray, cfg: Packing) -> np.ndarray:
    """The block widths of one side for ``cfg`` (what pack, the streaming and sharded layouts use).

    Rows shorter than ``min_width`` count as ``min_width`` long.  ``cfg.n_buckets`` > 0 asks for
    at most that many widths with least padding; 0 (auto) allows up to ``cfg.max_buckets``,
    each kept only if it saves ``cfg.bucket_saving`` padded entries, so a small input compiles
    a few programs instead of ten (benchmarks/results_compile.md) and a large one keeps all.
    """
    lengths = np.asarray(lengths)
    eff = np.maximum(lengths, min(cfg.min_width, cfg.max_width)) * (lengths > 0)
    if cfg.n_buckets > 0:
        return bucket_widths(eff, cfg.n_buckets, cfg.max_width)
    return bucket_widths(eff, cfg.max_buckets, cfg.max_width, saving=cfg.bucket_saving)


def _gather_rows(csr: CSR, starts: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, width] column ids and confidences of entries starts[j] .. starts[j]+lengths[j], zero padded."""
    offs = np.arange(width, dtype=np.int64)
    mask = offs[None, :] < lengths[:, None]
    pos = np.where(mask, starts[:, None] + offs[None, :], 0)
    cols = np.where(mask, np.asarray(csr.indices)[pos], 0).astype(np.int32)
    conf = np.where(mask, np.asarray(csr.values)[pos], 0).astype(np.float32)
    return cols, conf


def _pad_to(a: np.ndarray, n: int, fill) -> np.ndarray:
    if len(a) == n:
        return a
    pad = np.full((n - len(a),) + a.shape[1:], fill, dtype=a.dtype)
    return np.concatenate([a, pad])


def pack(csr: CSR, dim: int, cfg: Packing = Packing(), dense_rows: bool = False) -> PackedSide:
    """Packs a CSR into fixed-shape blocks.

    Args:
      csr: rows to update; columns index the other table.
      dim: embedding dimension (sizes the blocks).
      cfg: packing parameters.
      dense_rows: the solver forms a d x d matrix per row (Cholesky); caps rows per
        batch so those matrices fit ``cfg.max_dense_bytes``.
    """
    lengths = csr.lengths()
    n_rows = csr.n_rows
    entries = cfg.entries_for(dim)
    row_cap = max(1, cfg.max_dense_bytes // (4 * dim * dim)) if dense_rows else None
    widths = side_widths(lengths, cfg)
    indptr = np.asarray(csr.indptr)

    blocks = []
    padded = 0
    short = (lengths > 0) & (lengths <= cfg.max_width)
    bucket = np.searchsorted(widths, lengths, side="left")
    for b, width in enumerate(widths):
        ids = np.flatnonzero(short & (bucket == b)).astype(np.int32)
        if len(ids) == 0:
            continue
        per_batch = max(1, entries // int(width))
        if row_cap is not None:
            per_batch = min(per_batch, row_cap)
        per_batch = min(per_batch, len(ids))
        n_batches = -(-len(ids) // per_batch)
        cols, conf = _gather_rows(csr, indptr[ids], lengths[ids], int(width))
        total = n_batches * per_batch
        cols = _pad_to(cols, total, 0).reshape(n_batches, per_batch, int(width))
        conf = _pad_to(conf, total, 0).reshape(n_batches, per_batch, int(width))
        rows = _pad_to(ids, total, n_rows).reshape(n_batches, per_batch)
        blocks.append(Block(cols=cols, conf=conf, rows=rows))
        padded += total * int(width)

    long = None
    long_ids = np.flatnonzero(lengths > cfg.max_width).astype(np.int32)
    if len(long_ids):
        width = cfg.max_width
        n_sub = -(-lengths[long_ids] // width)  # sub-rows per long row
        seg = np.repeat(np.arange(len(long_ids), dtype=np.int32), n_sub)
        first = np.cumsum(n_sub) - n_sub
        j = np.arange(len(seg)) - np.repeat(first, n_sub)  # index of the sub-row within its row
        starts = indptr[long_ids][seg] + j * width
        sub_len = np.minimum(width, lengths[long_ids][seg] - j * width)
        cols, conf = _gather_rows(csr, starts, sub_len, width)
        per_chunk = min(max(1, entries // width), len(seg))
        n_chunks = -(-len(seg) // per_chunk)
        total = n_chunks * per_chunk
        long = LongRows(
            cols=_pad_to(cols, total, 0).reshape(n_chunks, per_chunk, width),
            conf=_pad_to(conf, total, 0).reshape(n_chunks, per_chunk, width),
            seg=_pad_to(seg, total, 0).reshape(n_chunks, per_chunk),
            rows=long_ids,
        )
        padded += total * width

    return PackedSide(
        blocks=tuple(blocks),
        long=long,
        counts=lengths.astype(np.float32),
        n_rows=n_rows,
        n_cols=csr.n_cols,
        nnz=csr.nnz,
        padded=padded,
    )
