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

import re

import jax
import jax.numpy as jnp
import numpy as np

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


# ---- permutations of a row-sharded table (checkpoints, layout changes) ------------------------


def permutation_plan(index: np.ndarray, n_src: int, n_shards: int) -> tuple[np.ndarray, np.ndarray]:
    """Host plan of ``out = src[index]`` between two row-sharded tables (numpy, identical on every process).

    The permutation is one exchange of :func:`fetch_rows`: each destination shard is a
    single "batch" whose rows come from their owners.

    Args:
      index: int64 [n_dst] source row of each destination row (-1: a zero row);
        n_dst and n_src are multiples of ``n_shards`` (P); shards hold contiguous rows.

    Returns:
      request int32 [P, 1, P, K]: request[p, 0, o] = local rows of source shard o that
        destination shard p needs (padded with 0); K = the largest such count.
      positions int32 [P, n_dst / P]: where each destination row is in p's received
        [P * K] buffer, -1 for a zero row.
    """
    P = n_shards
    ls, ld = n_src // P, len(index) // P
    dst = np.flatnonzero(index >= 0)
    src = np.asarray(index, np.int64)[dst]
    pair = (dst // ld) * P + src // ls  # (destination shard, owner)
    order = np.argsort(pair, kind="stable")
    pair, dst, src = pair[order], dst[order], src[order]
    counts = np.bincount(pair, minlength=P * P)
    k = max(1, int(counts.max(initial=0)))
    rank = np.arange(len(pair)) - (np.cumsum(counts) - counts)[pair]
    request = np.zeros((P, 1, P, k), np.int32)
    request[pair // P, 0, pair % P, rank] = src % ls
    positions = np.full((P, ld), -1, np.int32)
    positions[dst // ld, dst % ld] = (pair % P) * k + rank
    return request, positions


def permute_local(table: jax.Array, request: jax.Array, positions: jax.Array) -> jax.Array:
    """Inside shard_map: this shard's [n_out, d] rows of the permuted table (``table``'s dtype).

    :func:`serve_lists` then :func:`fetch_rows`: a device moves only the rows it sends and
    receives (about n_out x d), never the whole table.

    Args:
      table: [n_local, d] this shard of the source; request [1, P, K], positions [n_out]
        (see :func:`permutation_plan`).
    """
    rows = fetch_rows(table, (serve_lists(request)[0], jnp.maximum(positions, 0)))
    return jnp.where((positions >= 0)[:, None], rows, 0.0).astype(table.dtype)


# ---- byte accounting from the compiled program ---------------------------------------------

_DTYPE_BYTES = {
    "f32": 4,
    "bf16": 2,
    "f16": 2,
    "f64": 8,
    "s32": 4,
    "u32": 4,
    "s64": 8,
    "u64": 8,
    "s8": 1,
    "u8": 1,
    "pred": 1,
    "s16": 2,
    "u16": 2,
}
_COLLECTIVES = ("all-to-all", "all-reduce", "all-gather", "collective-permute", "reduce-scatter")
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_WHILE = re.compile(r"\bwhile\(.*body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALL = re.compile(r"\b(?:calls|true_computation|false_computation|branch_computations)=\{?%?([\w.\-]+)")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        n = 1
        for x in filter(None, dims.split(",")):
            n *= int(x)
        total += n * _DTYPE_BYTES[dtype]
    return total


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes per device that each collective kind produces when the program runs once.

    Parses optimised HLO text (``jit(f).lower(...).compile().as_text()``): the result
    size of every collective, multiplied by the known trip counts of the while loops
    around it (scans over batches).  For an all-to-all the result is the buffer a
    device receives (its own block included); (P - 1) / P of it crosses the network.
    """
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _COMP.match(line.strip())
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is not None:
            comps[current].append(line)

    memo: dict[str, dict[str, int]] = {}

    def visit(name: str, depth: int = 0) -> dict[str, int]:
        if name in memo:
            return memo[name]
        out = {k: 0 for k in _COLLECTIVES}
        if depth > 64 or name not in comps:
            return out
        for line in comps[name]:
            m = _OP.search(line)
            if m:
                out[m.group(2)] += _shape_bytes(m.group(1))
                continue
            w = _WHILE.search(line)
            if w:
                trip = _TRIP.search(line)
                n = int(trip.group(1)) if trip else 1
                for k, v in visit(w.group(1), depth + 1).items():
                    out[k] += n * v
                continue
            for c in _CALL.findall(line):
                for k, v in visit(c, depth + 1).items():
                    out[k] += v
        memo[name] = out
        return out

    if entry is None:
        return {k: 0 for k in _COLLECTIVES}
    return visit(entry)
