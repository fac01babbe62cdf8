"""Exact top-k scoring by row batches in JAX, with per-row exclusions.

Scores are dot products ``query @ table.T`` computed one batch of query rows at a
time, so memory is bounded by ``batch x (m + max history)`` and the full
``n x m`` score matrix is never formed.

Exclusions (a row's training history, or the row itself for similar items) are
applied inside the jitted batch function: the host builds an int32
``[batch, H]`` array of excluded column ids padded with ``m`` (out of range), and
the device scatters ``-inf`` there with ``mode="drop"`` so the padding is a
no-op. ``H`` is the batch's longest history rounded up to a power of two, and the
last batch is padded to the full batch size, so a call compiles once per
``(batch, k, H)`` bucket.

Tie-break: equal scores are ranked lower id first. ``jax.lax.top_k`` keeps index
order among equal values (checked in ``tests/test_topk.py``), and :func:`top_k`, its
two-stage form for long rows, gives the same answer.

When fewer than k columns are left for a row (``m < k``, or most of them are
excluded) the remaining slots hold score ``-inf`` and id ``-1``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alsx.data.matrix import CSR

PAD_ID = -1  # id in the output for "no item"


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def chunk_width(m: int, k: int) -> int:
    """Chunk size of :func:`top_k` for ``m`` columns: the widest of 64, 32, 16, 8 that leaves
    at least 4k whole chunks, or 0 (one plain ``lax.top_k``) when none does."""
    return next((c for c in (64, 32, 16, 8) if m // c >= 4 * k), 0)


def top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Exactly ``jax.lax.top_k(scores, k)`` (values [B, k] descending, ids [B, k] int32, equal
    values lower id first), found in two stages when the rows are long.

    XLA's CPU top-k over a whole 325k-column row costs more than the matmul that made it.
    Cut each row into chunks of ``c`` columns: an element in the top k lies in one of the k
    chunks whose maxima rank first (were its chunk not among them, their k maxima would all
    rank ahead of it, ties broken by the lower chunk, i.e. the lower ids).  So one max pass,
    a top-k over m / c chunk maxima and a top-k over the k c candidates (plus the < c
    columns left after the last whole chunk) give the same answer: on this 2-core CPU (jax 0.10) 3x (gowalla's
    41k columns) to 6x (cnr-2000's 326k) faster than one ``lax.top_k`` over the row (benchmarks/results_latency.md).
    """
    n, m = scores.shape
    c = chunk_width(m, k)
    if not c:
        return jax.lax.top_k(scores, k)
    whole = (m // c) * c
    chunk_max = scores[:, :whole].reshape(n, m // c, c)  # [B, m/c, c] -> [B, m/c] by halving (c is a power of two):
    while chunk_max.shape[-1] > 1:  # XLA's CPU reduce over a short minor axis ran 5x slower than these maxima
        half = chunk_max.shape[-1] // 2
        chunk_max = jnp.maximum(chunk_max[..., :half], chunk_max[..., half:])
    chunk_max = chunk_max[..., 0]
    _, chunks = jax.lax.top_k(chunk_max, k)
    chunks = jnp.sort(chunks, axis=1)  # candidates in id order, so top_k's stability keeps the tie-break
    ids = (chunks[:, :, None] * c + jnp.arange(c, dtype=chunks.dtype)).reshape(n, k * c)  # [B, k c]
    ids = jnp.concatenate([ids, jnp.broadcast_to(jnp.arange(whole, m, dtype=ids.dtype), (n, m - whole))], axis=1)
    values, pos = jax.lax.top_k(jnp.take_along_axis(scores, ids, axis=1), k)
    return values, jnp.take_along_axis(ids, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("k",))
def _score_batch(
    query: jax.Array, table: jax.Array, excluded: jax.Array, col_mask: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Top-k of one batch.

    Args:
      query: float32 [B, d].
      table: float32 [m, d].
      excluded: int32 [B, H] column ids to drop per row; ids >= m are padding.
      col_mask: float32 [m], 0 for allowed columns and -inf for globally excluded ones.
      k: static, <= m.

    Returns:
      scores float32 [B, k] and ids int32 [B, k] (-1 where the score is -inf).
    """
    # HIGHEST: on GPUs the default f32 matmul may use TF32, which perturbs rankings.
    scores = jnp.dot(query, table.T, precision=jax.lax.Precision.HIGHEST) + col_mask  # [B, m]
    batch_rows = jnp.arange(query.shape[0])[:, None]  # [B, 1] broadcast against [B, H]
    scores = scores.at[batch_rows, excluded].set(-jnp.inf, mode="drop")
    top_scores, top_ids = top_k(scores, k)  # equal scores keep index order
    top_ids = jnp.where(jnp.isneginf(top_scores), PAD_ID, top_ids).astype(jnp.int32)
    return top_scores, top_ids


def _padded_exclusions(exclude: CSR, rows: np.ndarray, n_cols: int) -> np.ndarray:
    """int32 [B, H] excluded column ids of ``rows``, padded with ``n_cols``; H a power of two."""
    starts = exclude.indptr[rows]
    lengths = exclude.indptr[rows + 1] - starts
    width = _next_pow2(int(lengths.max(initial=0)))
    offsets = np.arange(width, dtype=np.int64)[None, :]  # [1, H]
    valid = offsets < lengths[:, None]  # [B, H]
    if exclude.indices.size == 0:
        return np.full((rows.size, width), n_cols, dtype=np.int32)
    gather = np.minimum(starts[:, None] + offsets, exclude.indices.size - 1)
    return np.where(valid, exclude.indices[gather], n_cols).astype(np.int32)


def exclusion_rows(exclude: CSR | None, exclude_ids: np.ndarray | None, n: int) -> np.ndarray | None:
    """int64 [n] row of ``exclude`` for each query row (checked), or None without exclusions."""
    if exclude is None:
        if exclude_ids is not None:
            raise ValueError("exclude_ids was given without exclude.")
        return None
    rows_of = np.arange(n) if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
    if rows_of.shape != (n,):
        raise ValueError(f"exclude_ids must have one entry per query row ({n}). Got shape {rows_of.shape}.")
    if exclude_ids is None and exclude.n_rows != n:
        raise ValueError(f"exclude has {exclude.n_rows} rows but query has {n}; pass exclude_ids to map them.")
    if rows_of.size and (rows_of.min() < 0 or rows_of.max() >= exclude.n_rows):
        raise ValueError(f"exclude_ids must be in [0, {exclude.n_rows}).")
    return rows_of


# One batch's dense scores: 1024 rows x 325k columns would be 1.3 GB, and allocating
# such blocks over and over costs more in page faults than the scoring itself.
SCORE_BYTES = 128 << 20


def score_batch(n_cols: int, score_bytes: int = SCORE_BYTES, cap: int = 1024) -> int:
    """Rows per scoring batch: the largest power of two <= cap whose [rows, n_cols] float32 fits."""
    rows = max(1, min(cap, score_bytes // (4 * max(n_cols, 1))))
    return 1 << (rows.bit_length() - 1)


def topk_scores(
    query: np.ndarray | jax.Array,
    table: np.ndarray | jax.Array,
    k: int,
    exclude: CSR | None = None,
    batch_size: int | None = None,
    exclude_ids: np.ndarray | None = None,
    *,
    exclude_cols: np.ndarray | None = None,
    score_bytes: int = SCORE_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k columns by dot product for every query row.

    Args:
      query: float [n, d] row embeddings.
      table: float [m, d] column embeddings.
      k: number of results per row (may exceed m; extra slots are padding).
      exclude: per-row column ids to leave out (usually the training history), a CSR
        whose row ``exclude_ids[i]`` (or ``i``) belongs to query row ``i``.
      batch_size: query rows scored per device call; default: as many as fit a dense
        [batch, m] float32 score block in ``score_bytes`` (at most 1024, a power of two).
      exclude_ids: int [n] row of ``exclude`` for each query row, e.g. the evaluated
        rows' ids when ``query`` is a subset of the row table. Default: ``arange(n)``,
        which needs ``exclude.n_rows == n``.
      exclude_cols: int column ids removed for every row (e.g. unavailable items).
      score_bytes: memory budget of one batch's scores when ``batch_size`` is None.

    Returns:
      scores: float32 [n, k], descending per row; ``-inf`` in padded slots.
      ids: int32 [n, k]; ties in score are ordered lower id first; ``-1`` in padded slots.
    """
    query = jnp.asarray(query, dtype=jnp.float32)
    table = jnp.asarray(table, dtype=jnp.float32)
    if query.ndim != 2 or table.ndim != 2 or query.shape[1] != table.shape[1]:
        raise ValueError(f"query [n, d] and table [m, d] must share d. Got {query.shape} and {table.shape}.")
    if k < 1:
        raise ValueError(f"The 'k' parameter must be >= 1. Got {k!r} instead.")
    n, m = query.shape[0], table.shape[0]
    batch_size = score_batch(m, score_bytes) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter must be >= 1. Got {batch_size!r} instead.")
    if n == 0 or m == 0:
        return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), PAD_ID, dtype=np.int32)

    rows_of = exclusion_rows(exclude, exclude_ids, n)

    col_mask = np.zeros(m, dtype=np.float32)
    if exclude_cols is not None:
        col_mask[np.asarray(exclude_cols, dtype=np.int64)] = -np.inf
    col_mask = jnp.asarray(col_mask)

    k_eff = min(k, m)  # lax.top_k needs k <= m; the rest is padding below
    # Small inputs get a power-of-two batch so repeated small calls reuse one compile.
    batch = min(batch_size, _next_pow2(n))
    no_exclusions = jnp.full((batch, 1), m, dtype=jnp.int32)
    pieces = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        q = query[start:stop]
        if stop - start < batch:  # fixed shape: pad the last batch with zero rows
            q = jnp.pad(q, ((0, batch - (stop - start)), (0, 0)))
        if exclude is None:
            excluded = no_exclusions
        else:
            rows = np.zeros(batch, dtype=np.int64)  # padding rows borrow row 0; their output is dropped
            rows[: stop - start] = rows_of[start:stop]
            excluded = jnp.asarray(_padded_exclusions(exclude, rows, m))
        # Dispatch is asynchronous: the host builds the next batch while the device works.
        pieces.append((stop - start, _score_batch(q, table, excluded, col_mask, k_eff)))

    scores = np.concatenate([np.asarray(s)[:size] for size, (s, _) in pieces])
    ids = np.concatenate([np.asarray(i)[:size] for size, (_, i) in pieces])
    if k_eff < k:
        scores = np.pad(scores, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=PAD_ID)
    return scores.astype(np.float32, copy=False), ids.astype(np.int32, copy=False)


def similar(
    table: np.ndarray | jax.Array, ids: np.ndarray, k: int, exclude_self: bool = True, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of ``table`` most cosine-similar to each of ``table[ids]``.

    Args:
      table: float [m, d] embeddings. All-zero rows have similarity 0 to everything.
      ids: int [n] query rows of ``table``.
      k: results per query.
      exclude_self: drop each query's own id from its results.

    Returns:
      scores float32 [n, k] cosine similarities and ids int32 [n, k], as in
      :func:`topk_scores` (ties lower id first, ``-1`` padding).
    """
    table = jnp.asarray(table, dtype=jnp.float32)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    norms = jnp.linalg.norm(table, axis=1, keepdims=True)
    unit = table / jnp.where(norms > 0, norms, 1.0)  # zero rows stay zero instead of NaN
    query = unit[jnp.asarray(ids)]
    exclude = None
    if exclude_self:
        # One excluded id per query row: its own.
        exclude = CSR(
            indptr=np.arange(ids.size + 1, dtype=np.int64),
            indices=ids.astype(np.int32),
            values=np.ones(ids.size, dtype=np.float32),
            n_cols=int(table.shape[0]),
        )
    return topk_scores(query, unit, k, exclude=exclude, batch_size=batch_size)


# ---------------------------------------------------------------- NumPy path for a few rows
# One query row against ml1m's table takes ~0.1 ms in NumPy (a matrix-vector product and a
# partition); the jitted path costs a dispatch and device copies per call and compiles once
# per (batch, k, history width), so small batches go here (benchmarks/results_latency.md).
NUMPY_SCORES = 1 << 21  # query rows x columns up to which the NumPy path is used


def top_k_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values [k'], ids int32 [k']) of the k' = min(k, m) largest of ``scores`` [m], descending,
    equal values lower id first (as :func:`top_k`), -inf entries given id -1."""
    m = scores.shape[0]
    k = min(k, m)
    if k < m:
        part = np.argpartition(-scores, k - 1)[:k]
        cand = np.flatnonzero(scores >= scores[part].min())  # every tie of the k-th value
    else:
        cand = np.arange(m)
    cand = cand[np.lexsort((cand, -scores[cand]))[:k]]
    values = scores[cand]
    return values, np.where(np.isneginf(values), PAD_ID, cand).astype(np.int32)


def topk_numpy(
    query: np.ndarray,
    table: np.ndarray,
    k: int,
    excluded: list[np.ndarray] | None = None,
    col_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_scores` for a few rows, in NumPy float32.

    Args:
      query: [n, d]; table: [m, d].
      excluded: per query row, int column ids to drop (None: none).
      col_mask: float32 [m], 0 for allowed columns and -inf for excluded ones (None: all allowed).

    Returns:
      scores float32 [n, k] and ids int32 [n, k], -inf / -1 in padded slots.
    """
    # table @ query^T reads the [m, d] table in its own (row-major) order: ~2x faster than query @ table^T
    scores = np.ascontiguousarray((np.asarray(table, np.float32) @ np.asarray(query, np.float32).T).T)  # [n, m]
    if col_mask is not None:
        scores += col_mask
    n = scores.shape[0]
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), PAD_ID, np.int32)
    for r in range(n):
        if excluded is not None and len(excluded[r]):
            scores[r, excluded[r]] = -np.inf
        values, ids = top_k_row(scores[r], k)
        out_s[r, : len(values)], out_i[r, : len(ids)] = values, ids
    return out_s, out_i
