"""Per-shard packing with shapes common to all shards, plus the static exchange plan.

The sharded half-step runs one program on every device (``shard_map``), so every
shard's packed arrays must have the same shapes.  Shapes are derived from the
*global* row lengths only (every process knows them), so processes that each
pack only their own shards agree without seeing each other's entries; the one
content-dependent size, the exchange capacity K, is agreed by a max over
processes.

Packing is static, so the column rows each batch needs are known on the host.
For every (shard, batch) the plan lists the *deduplicated* column rows the batch
reads, grouped by the shard that owns them and padded to a capacity K (max over
shards, batches and owners; with balanced ownership K ~ unique / P)::

    request   int32 [n_batches, P, K]   request[b, o, k] = local slot, on owner o, of the
                                         k-th row this shard needs for batch b (0 = padding)
    positions int32 [n_batches, S, W]   entry (s, l) of batch b reads row
                                         positions[b, s, l] of the received [P * K, d] buffer

Rows are placed as in :func:`alsx.data.packing.pack` (the same block widths, chosen
from the global row lengths, and the same long-row split), with row slots local to the shard: ``n_local`` marks an empty slot.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from alsx.config import Packing
from alsx.data.layout import RowLayout
from alsx.data.matrix import CSR
from alsx.data.packing import side_widths


@dataclasses.dataclass(frozen=True)
class SideShape:
    """Shapes shared by all shards of one side.

    Attributes:
      widths: block width per bucket (buckets no shard uses are dropped).
      per_batch: rows per batch per bucket.
      n_batches: batches per bucket (max over shards).
      long: (n_long, per_chunk, n_chunks) of the long rows, or None if no shard has any.
      width: the long-row sub-row width (``Packing.max_width``).
    """

    widths: tuple[int, ...]
    per_batch: tuple[int, ...]
    n_batches: tuple[int, ...]
    long: tuple[int, int, int] | None
    width: int


@dataclasses.dataclass(frozen=True)
class ShardBlock:
    """One width bucket of one shard.

    Attributes:
      request: int32 [n_batches, P, K] rows wanted from each owner (see module doc).
      positions: int32 [n_batches, rows, width] index into the received [P * K] rows.
      conf: float32 [n_batches, rows, width] confidences (0 where padded).
      rows: int32 [n_batches, rows] local output slot (``n_local`` = empty).
    """

    request: np.ndarray
    positions: np.ndarray
    conf: np.ndarray
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class ShardLong:
    """The long rows of one shard, split into sub-rows.

    Attributes:
      request, positions, conf: as :class:`ShardBlock`, per chunk [n_chunks, ...].
      seg: int32 [n_chunks, sub_rows] slot in ``rows`` of each sub-row's row.
      rows: int32 [n_long] local output slot of each long row (``n_local`` = padding).
    """

    request: np.ndarray
    positions: np.ndarray
    conf: np.ndarray
    seg: np.ndarray
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class ShardSide:
    """One shard's packed side.

    Attributes:
      blocks: one per bucket of the common :class:`SideShape`.
      long: the long rows or None (then None on every shard).
      counts: float32 [n_local] stored entries per slot.
      nnz, padded: stored and padded entries.
      unique: sum over batches of distinct column rows read (the useful exchange volume).
    """

    blocks: tuple[ShardBlock, ...]
    long: ShardLong | None
    counts: np.ndarray
    nnz: int
    padded: int
    unique: int

    def caps(self) -> tuple[int, ...]:
        """Exchange capacity K of each block, then of the long rows."""
        ks = [b.request.shape[2] for b in self.blocks]
        if self.long is not None:
            ks.append(self.long.request.shape[2])
        return tuple(ks)

    def with_caps(self, caps: tuple[int, ...]) -> ShardSide:
        """The same side with every exchange capacity raised to ``caps`` (from :meth:`caps`)."""
        blocks = [
            dataclasses.replace(b, request=_pad_k(b.request, k), positions=_remap(b.positions, b.request, k))
            for b, k in zip(self.blocks, caps)
        ]
        long = self.long
        if long is not None:
            k = caps[len(blocks)]
            long = dataclasses.replace(
                long, request=_pad_k(long.request, k), positions=_remap(long.positions, long.request, k)
            )
        return dataclasses.replace(self, blocks=tuple(blocks), long=long)

    def arrays(self) -> dict:
        """The pytree the sharded step reads; ``cols`` of a block is the pair (request, positions)."""
        blocks = tuple(((b.request, b.positions), b.conf, b.rows) for b in self.blocks)
        long = None
        if self.long is not None:
            lg = self.long
            long = ((lg.request, lg.positions), lg.conf, lg.seg, lg.rows)
        return {"blocks": blocks, "long": long, "counts": self.counts}


def _pad_k(request: np.ndarray, k: int) -> np.ndarray:
    pad = k - request.shape[2]
    return request if pad == 0 else np.pad(request, ((0, 0), (0, 0), (0, pad)))


def _remap(positions: np.ndarray, request: np.ndarray, k: int) -> np.ndarray:
    """Positions owner * K_old + rank -> owner * k + rank."""
    k_old = request.shape[2]
    if k_old == k:
        return positions
    return ((positions // k_old) * k + positions % k_old).astype(np.int32)


def side_shape(counts: np.ndarray, layout: RowLayout, dim: int, cfg: Packing, dense_rows: bool) -> SideShape:
    """Common shapes from the global row lengths ``counts`` [n] (identical on every process)."""
    counts = np.asarray(counts, dtype=np.int64)
    entries = cfg.entries_for(dim)
    row_cap = max(1, cfg.max_dense_bytes // (4 * dim * dim)) if dense_rows else None
    # The widths LocalEngine's pack() picks for the whole side, so rows land in the same buckets.
    widths = side_widths(counts, cfg)
    shard_of = layout.position // layout.n_local
    P = layout.n_shards
    short = (counts > 0) & (counts <= cfg.max_width)
    bucket = np.searchsorted(widths, counts, side="left")
    per_shard = np.bincount(shard_of[short] * len(widths) + bucket[short], minlength=P * len(widths)).reshape(
        P, len(widths)
    )
    ws, per, nbs = [], [], []
    for b, width in enumerate(widths):
        most = int(per_shard[:, b].max(initial=0))
        if most == 0:
            continue
        per_batch = max(1, entries // int(width))
        if row_cap is not None:
            per_batch = min(per_batch, row_cap)
        per_batch = min(per_batch, most)
        ws.append(int(width))
        per.append(per_batch)
        nbs.append(-(-most // per_batch))
    long = None
    is_long = counts > cfg.max_width
    if is_long.any():
        width = cfg.max_width
        n_long = np.bincount(shard_of[is_long], minlength=P)
        n_sub = np.bincount(shard_of[is_long], weights=-(-counts[is_long] // width), minlength=P).astype(np.int64)
        per_chunk = min(max(1, entries // width), int(n_sub.max()))
        long = (int(n_long.max()), per_chunk, int(-(-n_sub.max() // per_chunk)))
    return SideShape(widths=tuple(ws), per_batch=tuple(per), n_batches=tuple(nbs), long=long, width=cfg.max_width)


def _gather(csr: CSR, starts: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, width] column ids and confidences of entries starts .. starts + lengths, zero padded."""
    offs = np.arange(width, dtype=np.int64)
    mask = offs[None, :] < lengths[:, None]
    pos = np.where(mask, starts[:, None] + offs[None, :], 0)
    if csr.indices.size == 0:
        return np.zeros(mask.shape, np.int64), np.zeros(mask.shape, np.float32)
    cols = np.where(mask, np.asarray(csr.indices)[pos], 0).astype(np.int64)
    conf = np.where(mask, np.asarray(csr.values)[pos], 0).astype(np.float32)
    return cols, conf


def _plan(slots: np.ndarray, valid: np.ndarray, other: RowLayout) -> tuple[np.ndarray, np.ndarray, int]:
    """Deduplicated per-batch requests grouped by owner.

    Args:
      slots: int64 [n_batches, S, W] device slots (in ``other``) of the entries' column rows.
      valid: bool [n_batches, S, W] real (non-padding) entries.

    Returns:
      request int32 [n_batches, P, K], positions int32 [n_batches, S, W], and the number
      of distinct (batch, row) pairs.
    """
    nb = slots.shape[0]
    P, n_loc = other.n_shards, other.n_local
    n_slots = np.int64(other.n_slots)
    batch = np.arange(nb, dtype=np.int64).reshape(nb, *([1] * (slots.ndim - 1)))
    key = (batch * n_slots + slots)[valid]  # one key per (batch, needed row)
    uniq = np.unique(key)
    b_u, pos_u = uniq // n_slots, uniq % n_slots
    owner_u, local_u = pos_u // n_loc, pos_u % n_loc
    group = b_u * P + owner_u  # uniq is sorted, so each (batch, owner) group is contiguous
    cnt = np.bincount(group, minlength=nb * P)
    k = max(1, int(cnt.max(initial=0)))
    rank = np.arange(len(uniq)) - (np.cumsum(cnt) - cnt)[group]
    request = np.zeros((nb, P, k), dtype=np.int32)
    request[b_u, owner_u, rank] = local_u
    positions = np.zeros(slots.shape, dtype=np.int32)  # padding reads row 0 of the buffer (conf is 0)
    positions[valid] = (owner_u * k + rank)[np.searchsorted(uniq, key)]
    return request, positions, len(uniq)


def pack_shard(csr: CSR, layout: RowLayout, other: RowLayout, shard: int, shape: SideShape) -> ShardSide:
    """Packs the rows ``shard`` owns (only those rows of ``csr`` are read).

    Args:
      csr: the side's rows in external ids (rows of other shards may be empty).
      layout: ownership of this side's rows.
      other: ownership of the table the columns index (the exchange sources).
      shard: which shard to pack.
      shape: the common shapes from :func:`side_shape`.
    """
    n_loc = layout.n_local
    ext = layout.shard_rows(shard)  # [n_local] external row per slot, -1 padding
    real = ext >= 0
    indptr = np.asarray(csr.indptr)
    starts = np.zeros(n_loc, np.int64)
    lengths = np.zeros(n_loc, np.int64)
    starts[real] = indptr[ext[real]]
    lengths[real] = indptr[ext[real] + 1] - indptr[ext[real]]
    widths = np.asarray(shape.widths, dtype=np.int64)
    bucket = np.searchsorted(widths, lengths, side="left")
    short = (lengths > 0) & (lengths <= shape.width)

    blocks, padded, unique = [], 0, 0
    for b, width in enumerate(shape.widths):
        per_batch, n_batches = shape.per_batch[b], shape.n_batches[b]
        total = per_batch * n_batches
        ids = np.flatnonzero(short & (bucket == b))
        if len(ids) > total:
            raise AssertionError(f"shard {shard} has {len(ids)} rows of width {width}, shape allows {total}")
        cols, conf = _gather(csr, starts[ids], lengths[ids], width)
        slots = np.zeros((total, width), np.int64)
        slots[: len(ids)] = other.position[cols] if cols.size else 0
        conf_p = np.zeros((total, width), np.float32)
        conf_p[: len(ids)] = conf
        rows = np.full(total, n_loc, np.int32)
        rows[: len(ids)] = ids
        slots = slots.reshape(n_batches, per_batch, width)
        conf_p = conf_p.reshape(n_batches, per_batch, width)
        valid = np.zeros((total, width), bool)
        valid[: len(ids)] = np.arange(width)[None, :] < lengths[ids][:, None]
        valid = valid.reshape(n_batches, per_batch, width)
        request, positions, n_u = _plan(slots, valid, other)
        blocks.append(
            ShardBlock(request=request, positions=positions, conf=conf_p, rows=rows.reshape(n_batches, per_batch))
        )
        padded += total * width
        unique += n_u

    long = None
    if shape.long is not None:
        n_long, per_chunk, n_chunks = shape.long
        width = shape.width
        long_ids = np.flatnonzero(lengths > width)
        n_sub = -(-lengths[long_ids] // width)
        seg = np.repeat(np.arange(len(long_ids), dtype=np.int64), n_sub)
        first = np.cumsum(n_sub) - n_sub
        j = np.arange(len(seg)) - np.repeat(first, n_sub)
        sub_start = starts[long_ids][seg] + j * width
        sub_len = np.minimum(width, lengths[long_ids][seg] - j * width)
        cols, conf = _gather(csr, sub_start, sub_len, width)
        total = per_chunk * n_chunks
        slots = np.zeros((total, width), np.int64)
        slots[: len(seg)] = other.position[cols] if cols.size else 0
        conf_p = np.zeros((total, width), np.float32)
        conf_p[: len(seg)] = conf
        valid = np.zeros((total, width), bool)
        valid[: len(seg)] = np.arange(width)[None, :] < sub_len[:, None]
        seg_p = np.zeros(total, np.int32)
        seg_p[: len(seg)] = seg
        rows = np.full(n_long, n_loc, np.int32)
        rows[: len(long_ids)] = long_ids
        request, positions, n_u = _plan(
            slots.reshape(n_chunks, per_chunk, width), valid.reshape(n_chunks, per_chunk, width), other
        )
        long = ShardLong(
            request=request,
            positions=positions,
            conf=conf_p.reshape(n_chunks, per_chunk, width),
            seg=seg_p.reshape(n_chunks, per_chunk),
            rows=rows,
        )
        padded += total * width
        unique += n_u

    return ShardSide(
        blocks=tuple(blocks),
        long=long,
        counts=lengths.astype(np.float32),
        nnz=int(lengths.sum()),
        padded=padded,
        unique=unique,
    )


def stack(sides: list[ShardSide]) -> dict:
    """Stacks the arrays of several shards (same caps) on a new leading axis: leaves [n, ...]."""
    trees = [s.arrays() for s in sides]
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def local_part(csr: CSR, layout: RowLayout, shards: list[int]) -> CSR:
    """The rows of ``csr`` that ``shards`` own; every other row left empty (same shape).

    What one process of a multi-process run needs to keep: pass it with the global
    row lengths (``ShardedEngine(..., row_counts=..., col_counts=...)``).  A reader
    that streams the input can apply the same ownership test entry by entry.  Reads
    only the entries between the first and the last owned row.
    """
    keep = np.zeros(csr.n_rows, dtype=bool)
    for s in shards:
        ext = layout.shard_rows(s)
        keep[ext[ext >= 0]] = True
    full = csr.lengths()
    lengths = np.where(keep, full, 0)
    indptr = np.zeros(csr.n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    owned = np.flatnonzero(keep)
    if owned.size == 0:
        return CSR(indptr=indptr, indices=np.zeros(0, np.int32), values=np.zeros(0, np.float32), n_cols=csr.n_cols)
    # Only the span [first owned row, last owned row] of the entries is read: one
    # contiguous slice when the layout gives this process a row range (n_groups > 1).
    lo, hi = int(owned[0]), int(owned[-1]) + 1
    a, b = int(csr.indptr[lo]), int(csr.indptr[hi])
    indices, values = np.asarray(csr.indices[a:b]), np.asarray(csr.values[a:b])
    if owned.size < hi - lo:
        take = np.repeat(keep[lo:hi], full[lo:hi])
        indices, values = indices[take], values[take]
    return CSR(indptr=indptr, indices=indices, values=values, n_cols=csr.n_cols)
