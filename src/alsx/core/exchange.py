"""shard_map collectives that fetch the column rows a batch reads from their owners.

All functions here run *inside* ``shard_map`` over the ``SHARD`` axis; shapes in
docstrings are per device.  P is the number of shards, K the exchange capacity
of the block (see :mod:`alsx.data.shard_packing`).

The exchange (all-to-all)::

    setup, once:   request [n_b, P, K] --all_to_all--> serve [n_b, P, K]
                   (serve[b, p] = my local slots that shard p needs for its batch b)
    every batch:   rows = table[serve[b]]               [P, K, d]  rows I own, by requester
                   got  = all_to_all(rows)              [P, K, d]  rows I need, by owner
                   hg   = got.reshape(P * K, d)[positions]   [S, W, d]

Each device sends and receives (P - 1) K rows per batch, and K ~ unique / P with
balanced ownership, so the volume per device stays ~ unique rows x d whatever P.

The ALX gather (all-gather the ids, every shard looks up what it owns, psum the
masked rows) moves P x S x W x d per device instead; :func:`allgather_rows` keeps
it for the benchmark's comparison.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alsx.core.sharding import SHARD


def serve_lists(request: jax.Array) -> jax.Array:
    """int32 [n_b, P, K] requests by owner -> [n_b, P, K] requests addressed to me, by requester."""
    return jax.lax.all_to_all(request, SHARD, 1, 1, tiled=True)


def fetch_rows(table: jax.Array, plan: tuple[jax.Array, jax.Array]) -> jax.Array:
    """[S, W, d] float32 rows of the sharded ``table`` read by one batch.

    A drop-in ``gather`` for :mod:`alsx.core.step`: the step passes the batch's
    ``cols`` through unchanged, and for the sharded side that is this plan.

    Args:
      table: [n_local, d] this device's shard (any float dtype; exchanged as stored).
      plan: (serve int32 [P, K], positions int32 [S, W]).
    """
    serve, positions = plan
    d = table.shape[1]
    with jax.named_scope("exchange"):
        rows = jnp.take(table, serve, axis=0)  # [P, K, d]: block p goes to shard p
        got = jax.lax.all_to_all(rows, SHARD, 0, 0, tiled=True)  # [P, K, d]: block o came from owner o
        buf = got.reshape(-1, d)  # [P * K, d]
        return jnp.take(buf, positions, axis=0).astype(jnp.float32)  # [S, W, d]


def allgather_rows(table: jax.Array, slots: jax.Array) -> jax.Array:
    """[S, W, d] float32 rows at global ``slots`` [S, W], the ALX way (for comparison only).

    All-gathers every shard's ids ([P, S, W]), looks up the ones this shard owns
    (zeros elsewhere) and psums the [P, S, W, d] result, of which each shard keeps
    its own slice.  Traffic per device grows with P.
    """
    n_local = table.shape[0]
    me = jax.lax.axis_index(SHARD)
    with jax.named_scope("allgather_exchange"):
        ids = jax.lax.all_gather(slots, SHARD)  # [P, S, W]
        local = ids - me * n_local
        mine = (local >= 0) & (local < n_local)
        rows = jnp.take(table, jnp.where(mine, local, 0), axis=0).astype(jnp.float32)
        rows = jnp.where(mine[..., None], rows, 0.0)  # [P, S, W, d]
        return jax.lax.psum(rows, SHARD)[me]
