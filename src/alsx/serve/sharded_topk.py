"""Exact top-k against a column table sharded by rows over the mesh.

Each device scores a batch of queries against its own column shard only
([B, m / P] scores, never [B, m] on one device), drops excluded and padding
columns, and keeps its k best; the P x k candidates are all-gathered and merged
exactly by (score descending, id ascending)::

    query batch  [B, d]            replicated
    shard        [n_local, d]      TABLE spec, rows in the layout's slot order
    local top-k  [B, k]            per device
    all_gather   [B, P * k]        -> sort by (-score, id) -> [B, k]

Tie-break and padding follow :func:`alsx.serve.topk.topk_scores`: equal scores
rank the lower column id first (within a shard, slots are in increasing external
id, and ``lax.top_k`` keeps index order among equals; the merge sorts on the id
explicitly), and slots with nothing left hold score ``-inf`` and id ``-1``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alsx.core.dispatch import bounded
from alsx.core.sharding import (
    REPLICATED,
    SHARD,
    STACKED,
    TABLE,
    RowLayout,
    contiguous_layout,
    make_mesh,
    n_shards,
    stacked_sharding,
    table_sharding,
)
from alsx.data.matrix import CSR
from alsx.serve.topk import exclusion_rows, score_batch, top_k

PAD_ID = -1
_NO_ID = np.iinfo(np.int32).max  # sorts after every real id in the merge


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class ShardedTable:
    """A [m, d] column table sharded by rows, with its row layout.

    Attributes:
      table: [P * n_local, d] device table in slot order (TABLE spec).
      ids: int32 [P * n_local] external id of each slot, -1 for padding (STACKED spec).
      layout: the ownership of rows.
      mesh: the mesh it lives on.
    """

    table: jax.Array
    ids: jax.Array
    layout: RowLayout
    mesh: Mesh

    @property
    def n(self) -> int:
        return self.layout.n

    @classmethod
    def from_numpy(cls, table: np.ndarray, mesh: Mesh | None = None) -> ShardedTable:
        """Shards a host table [m, d] (same on every process) in contiguous row ranges."""
        mesh = make_mesh() if mesh is None else mesh
        table = np.asarray(table, np.float32)
        layout = contiguous_layout(table.shape[0], n_shards(mesh))
        return cls.from_layout(table, layout, mesh)

    @classmethod
    def from_layout(cls, table: np.ndarray, layout: RowLayout, mesh: Mesh) -> ShardedTable:
        """Places a host table [m, d] in external order into ``layout``'s slots."""
        d = table.shape[1]

        def piece(index):
            ext = layout.external[index[0]]
            out = np.zeros((len(ext), d), np.float32)
            out[ext >= 0] = table[ext[ext >= 0]]
            return out

        dev = jax.make_array_from_callback((layout.n_slots, d), table_sharding(mesh), piece)
        return cls(table=dev, ids=_slot_ids(layout, mesh), layout=layout, mesh=mesh)

    @classmethod
    def from_engine(cls, engine, state) -> ShardedTable:
        """The column table of a ``ShardedEngine`` state, in place (no copy, no host trip)."""
        return cls(
            table=state.h, ids=_slot_ids(engine.col_layout, engine.mesh), layout=engine.col_layout, mesh=engine.mesh
        )


def _slot_ids(layout: RowLayout, mesh: Mesh) -> jax.Array:
    ext = layout.external.astype(np.int32)
    return jax.make_array_from_callback(ext.shape, stacked_sharding(mesh), lambda idx: ext[idx])


@functools.lru_cache(maxsize=32)
def _program(mesh: Mesh, n_local: int, k_local: int, k: int):
    """The jitted shard_map scoring one batch: (q, table, ids, col_mask, excluded) -> (scores, ids)."""

    def body(q, table, ids, col_mask, excluded):
        # q [B, d]; table [n_local, d]; ids, col_mask [n_local]; excluded [B, H] global slots (-1 pad)
        me = jax.lax.axis_index(SHARD)
        scores = jnp.dot(q, table.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST)  # [B, n_local]
        scores = jnp.where(ids[None, :] >= 0, scores + col_mask[None, :], -jnp.inf)
        local = excluded - me * n_local
        local = jnp.where((local >= 0) & (local < n_local), local, n_local)  # n_local: dropped below
        rows = jnp.arange(q.shape[0])[:, None]
        scores = scores.at[rows, local].set(-jnp.inf, mode="drop")
        top_s, top_i = top_k(scores, k_local)  # [B, k_local]; equal scores keep slot (= id) order
        top_id = jnp.where(jnp.isneginf(top_s), _NO_ID, ids[top_i])
        all_s = jax.lax.all_gather(top_s, SHARD, axis=1, tiled=True)  # [B, P * k_local]
        all_id = jax.lax.all_gather(top_id, SHARD, axis=1, tiled=True)
        neg, merged_id = jax.lax.sort((-all_s, all_id), dimension=1, num_keys=2)  # score desc, then id asc
        out_s = -neg[:, :k]
        out_id = jnp.where(jnp.isneginf(out_s), PAD_ID, merged_id[:, :k]).astype(jnp.int32)
        return out_s, out_id

    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(REPLICATED, TABLE, STACKED, STACKED, REPLICATED),
        out_specs=(REPLICATED, REPLICATED),
        check_vma=False,
    )
    return jax.jit(fn)


def _excluded_slots(exclude: CSR, rows: np.ndarray, layout: RowLayout) -> np.ndarray:
    """int32 [B, H] slots of the excluded columns of ``rows``, -1 padded; H a power of two."""
    starts = exclude.indptr[rows]
    lengths = exclude.indptr[rows + 1] - starts
    width = _next_pow2(int(lengths.max(initial=0)))
    offsets = np.arange(width, dtype=np.int64)[None, :]
    valid = offsets < lengths[:, None]
    if exclude.indices.size == 0:
        return np.full((rows.size, width), -1, np.int32)
    cols = exclude.indices[np.minimum(starts[:, None] + offsets, exclude.indices.size - 1)]
    return np.where(valid, layout.position[cols], -1).astype(np.int32)


def sharded_topk(
    query: np.ndarray,
    table: ShardedTable | np.ndarray,
    k: int,
    exclude: CSR | None = None,
    batch_size: int | None = None,
    exclude_ids: np.ndarray | None = None,
    *,
    exclude_cols: np.ndarray | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k columns by dot product, scored shard by shard.

    Same contract as :func:`alsx.serve.topk.topk_scores`.

    Args:
      query: float [n, d] row embeddings (host; batches are replicated to every device).
      table: a :class:`ShardedTable`, or a host [m, d] table to shard over ``mesh``.
      k: results per row (may exceed m; extra slots are padding).
      exclude: CSR of per-row excluded column ids (e.g. the training history); row
        ``exclude_ids[i]`` (default ``i``) belongs to query row ``i``.
      batch_size: query rows per device call; default: sized like ``topk_scores`` from
        each device's column shard.
      exclude_ids: int [n] row of ``exclude`` for each query row.
      exclude_cols: column ids removed for every row.
      mesh: the mesh for a host ``table`` (default: all devices).

    Returns:
      scores float32 [n, k] descending, ``-inf`` in padded slots; ids int32 [n, k],
      ties lower id first, ``-1`` in padded slots.
    """
    if not isinstance(table, ShardedTable):
        table = ShardedTable.from_numpy(np.asarray(table), mesh)
    query = np.asarray(query, np.float32)
    d = table.table.shape[1]
    if query.ndim != 2 or query.shape[1] != d:
        raise ValueError(f"query [n, d] and table [m, d] must share d. Got {query.shape} and {(table.n, d)}.")
    if k < 1:
        raise ValueError(f"The 'k' parameter must be >= 1. Got {k!r} instead.")
    n, m = query.shape[0], table.n
    batch_size = score_batch(table.layout.n_local) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter must be >= 1. Got {batch_size!r} instead.")
    if n == 0 or m == 0:
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), PAD_ID, np.int32)
    rows_of = exclusion_rows(exclude, exclude_ids, n)

    layout, mesh = table.layout, table.mesh
    mask = np.zeros(layout.n_slots, np.float32)
    if exclude_cols is not None:
        mask[layout.position[np.asarray(exclude_cols, np.int64)]] = -np.inf
    col_mask = jax.make_array_from_callback(mask.shape, stacked_sharding(mesh), lambda idx: mask[idx])

    k_eff = min(k, m)
    k_local = min(k_eff, layout.n_local)
    fn = _program(mesh, layout.n_local, k_local, k_eff)
    replicated = jax.sharding.NamedSharding(mesh, REPLICATED)
    batch = min(batch_size, _next_pow2(n))
    no_excl = np.full((batch, 1), -1, np.int32)

    def launches():
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            q = np.zeros((batch, d), np.float32)
            q[: stop - start] = query[start:stop]
            if rows_of is None:
                excl = no_excl
            else:
                rows = np.zeros(batch, np.int64)
                rows[: stop - start] = rows_of[start:stop]
                excl = _excluded_slots(exclude, rows, layout)
            q, excl = jax.device_put((q, excl), replicated)  # every process passes the same batch
            yield fn(q, table.table, table.ids, col_mask, excl)

    # A few batches in flight, never all of them: see alsx.core.dispatch (XLA:CPU deadlocks
    # a collective once 32 programs are queued per device and devices outnumber spare threads).
    pieces = [(np.asarray(s), np.asarray(i)) for s, i in bounded(launches())]
    scores = np.concatenate([s for s, _ in pieces])[:n]
    ids = np.concatenate([i for _, i in pieces])[:n]
    if k_eff < k:
        scores = np.pad(scores, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=PAD_ID)
    return scores.astype(np.float32, copy=False), ids.astype(np.int32, copy=False)
