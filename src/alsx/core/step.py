"""The half-epoch: gather -> normal equations -> solve -> scatter.

``half_step`` updates every row of one table against the fixed other table; an
epoch is two half-steps with the roles swapped (or, for tied embeddings, two
half-steps of one table, first by its out-links then by its in-links).

Everything here is a pure function of (tables, packed arrays, hyper-parameters),
jit-compiled once per packed shape (``cpu_jit``: cheaper XLA options on a CPU).  The column gather is a parameter so the
sharded engine can replace a local ``take`` with its exchange.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from alsx.compile_cache import cpu_jit
from alsx.core import normal_eq as ne
from alsx.core import solvers
from alsx.core.objective import row_regularisation

Gather = Callable[[jax.Array, jax.Array], jax.Array]
SideArrays = dict[str, Any]  # PackedSide.arrays() on device


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """[..., d] float32 rows of ``table`` at ``ids`` (the single-device gather)."""
    return jnp.take(table, ids, axis=0).astype(jnp.float32)


def solve_rows(hg, conf, x0, reg, gram, alpha0, solver, cg_steps, block_size=0):
    """Solves the normal equations of S independent rows from their gathered block.

    solver: 'cg' (``cg_steps`` matrix-free steps), 'cholesky' (exact) or 'block'
    (one iALS++ sweep over blocks of ``block_size`` dimensions).
    """
    if solver == "block":

        def stats(x, k):
            hk = jax.lax.dynamic_slice_in_dim(hg, k, block_size, axis=2)
            err = ne.block_scores(hg, x) - 1.0
            return ne.block_lhs(hk, conf), ne.block_rhs(hk, conf * err)

        return solvers.block_coordinate(stats, x0, gram, alpha0, reg, block_size)
    if solver == "cholesky":
        a = ne.shared_lhs(ne.block_lhs(hg, conf), gram, alpha0, reg)
        return solvers.cholesky(a, ne.block_rhs(hg, conf))

    def matvec(x):
        return ne.add_shared(ne.block_matvec(hg, conf, x), x, gram, alpha0, reg)

    r0 = ne.block_residual(hg, conf, x0) - ne.add_shared(0.0, x0, gram, alpha0, reg)
    return solvers.conjugate_gradient(matvec, r0, x0, cg_steps)


def solve_block(w, h, gram, block, lam, alpha0, solver, cg_steps, gather, block_size=0):
    """[n_batches, S, d] solutions for one width bucket, one batch at a time (bounded memory)."""
    cols, conf, rows = block

    def body(_, batch):
        c, cf, r = batch
        hg = gather(h, c)
        x0 = w.at[r].get(mode="fill", fill_value=0).astype(jnp.float32)
        reg = lam.at[r].get(mode="fill", fill_value=1.0)
        return None, solve_rows(hg, cf, x0, reg, gram, alpha0, solver, cg_steps, block_size)

    _, x = jax.lax.scan(body, None, (cols, conf, rows))
    return x


def solve_long(w, h, gram, long, lam, alpha0, solver, cg_steps, gather, block_size=0):
    """[n_long, d] solutions for rows split into sub-rows; each pass over A sums all chunks."""
    cols, conf, seg, rows = long
    n_long = rows.shape[0]
    d = h.shape[1]

    def chunk_sum(fn, shape):
        def body(acc, chunk):
            c, cf, sg = chunk
            return acc + jax.ops.segment_sum(fn(gather(h, c), cf, sg), sg, n_long), None

        acc, _ = jax.lax.scan(body, jnp.zeros(shape, jnp.float32), (cols, conf, seg))
        return acc

    reg = lam[rows]
    x0 = w[rows].astype(jnp.float32)
    if solver == "block":

        def stats(x, k):
            def both(hg, cf, sg):
                hk = jax.lax.dynamic_slice_in_dim(hg, k, block_size, axis=2)
                err = ne.block_scores(hg, x[sg]) - 1.0
                return jnp.concatenate([ne.block_lhs(hk, cf), ne.block_rhs(hk, cf * err)[:, None, :]], axis=1)

            acc = chunk_sum(both, (n_long, block_size + 1, block_size))
            return acc[:, :block_size], acc[:, block_size]

        return solvers.block_coordinate(stats, x0, gram, alpha0, reg, block_size)
    if solver == "cholesky":
        a = chunk_sum(lambda hg, cf, sg: ne.block_lhs(hg, cf), (n_long, d, d))
        b = chunk_sum(lambda hg, cf, sg: ne.block_rhs(hg, cf), (n_long, d))
        return solvers.cholesky(ne.shared_lhs(a, gram, alpha0, reg), b)

    def matvec(x):
        ax = chunk_sum(lambda hg, cf, sg: ne.block_matvec(hg, cf, x[sg]), (n_long, d))
        return ne.add_shared(ax, x, gram, alpha0, reg)

    r0 = chunk_sum(lambda hg, cf, sg: ne.block_residual(hg, cf, x0[sg]), (n_long, d))
    r0 = r0 - ne.add_shared(0.0, x0, gram, alpha0, reg)
    return solvers.conjugate_gradient(matvec, r0, x0, cg_steps)


# ``out`` is donated: each bucket writes its rows in place instead of copying the table.
@functools.partial(cpu_jit, static_argnames=("solver", "cg_steps", "gather", "block_size"), donate_argnums=0)
def block_update(out, w, h, gram, block, lam, alpha0, solver, cg_steps, gather, block_size=0):
    """``out`` with the rows of one width bucket (cols, conf, rows arrays) re-solved."""
    x = solve_block(w, h, gram, block, lam, alpha0, solver, cg_steps, gather, block_size)
    return out.at[block[2].reshape(-1)].set(x.reshape(-1, w.shape[1]).astype(out.dtype), mode="drop")


@functools.partial(cpu_jit, static_argnames=("solver", "cg_steps", "gather", "block_size"), donate_argnums=0)
def long_update(out, w, h, gram, long, lam, alpha0, solver, cg_steps, gather, block_size=0):
    """``out`` with the long rows (cols, conf, seg, rows arrays) re-solved."""
    x = solve_long(w, h, gram, long, lam, alpha0, solver, cg_steps, gather, block_size)
    return out.at[long[3]].set(x.astype(out.dtype))


@functools.partial(cpu_jit, static_argnames=("n_other",))
def prologue(w, h, counts, reg, alpha0, nu, n_other):
    """What all buckets of a half-step share: the Gramian of ``h``, every row's lambda, and the
    zero table the buckets write their rows into (one program, not three)."""
    return ne.gramian(h), row_regularisation(counts, n_other, reg, alpha0, nu), jnp.zeros_like(w)


def half_step(
    w: jax.Array,
    h: jax.Array,
    side: SideArrays,
    reg: float,
    alpha0: float,
    nu: float,
    *,
    solver: str = "cg",
    cg_steps: int = 3,
    gather: Gather = take_rows,
    block_size: int = 0,
    gram: jax.Array | None = None,
    n_other: int | None = None,
) -> jax.Array:
    """Re-solves every row of ``w`` [n_rows, d] against the fixed ``h`` [n_cols, d].

    Rows with no entries get the exact optimum 0.  Returns a new table of ``w``'s dtype.
    ``gram`` / ``n_other``: the whole fixed table's Gramian and row count when ``h`` holds
    only the rows the entries read (fold-in against a table sharded elsewhere).
    Each width bucket is its own compiled program, run one after the other: one XLA
    program holding many buckets' batched LAPACK Cholesky calls deadlocked on the CPU
    (since fixed in ``solvers.cholesky``), and per-bucket programs also compile in
    small, reusable pieces.  Inside ``jit`` (the sharded engine) the calls simply inline.
    """
    g, lam, out = prologue(w, h, side["counts"], reg, alpha0, nu, h.shape[0] if n_other is None else n_other)
    gram = g if gram is None else jnp.asarray(gram, jnp.float32)
    for block in side["blocks"]:
        out = block_update(out, w, h, gram, block, lam, alpha0, solver, cg_steps, gather, block_size)
    if side["long"] is not None:
        out = long_update(out, w, h, gram, side["long"], lam, alpha0, solver, cg_steps, gather, block_size)
    return out


@functools.partial(cpu_jit, static_argnames=("gather",))
def observed_loss(w: jax.Array, h: jax.Array, side: SideArrays, gather: Gather = take_rows) -> jax.Array:
    """sum over stored entries of c_ui (<w_u, h_i> - 1)^2 (padding has c = 0)."""
    total = jnp.zeros((), jnp.float32)
    for cols, conf, rows in side["blocks"]:

        def body(acc, batch):
            c, cf, r = batch
            x = w.at[r].get(mode="fill", fill_value=0).astype(jnp.float32)
            s = ne.block_scores(gather(h, c), x)
            return acc + jnp.sum(cf * (s - 1.0) ** 2), None

        total, _ = jax.lax.scan(body, total, (cols, conf, rows))
    if side["long"] is not None:
        cols, conf, seg, rows = side["long"]
        wl = w[rows].astype(jnp.float32)

        def body(acc, chunk):
            c, cf, sg = chunk
            s = ne.block_scores(gather(h, c), wl[sg])
            return acc + jnp.sum(cf * (s - 1.0) ** 2), None

        total, _ = jax.lax.scan(body, total, (cols, conf, seg))
    return total
