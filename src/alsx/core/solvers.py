"""Batched linear solvers behind one calling convention.

Each solver takes the right-hand sides ``b`` [R, d], a warm start ``x0`` [R, d]
(CG: the starting residual instead) and either a matrix-free ``matvec`` ([R, d] -> [R, d]) or dense ``a`` [R, d, d].
Rows are independent systems; every operation is batched over R.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

MatVec = Callable[[jax.Array], jax.Array]

# CG stops on a row once |r|^2 falls to this.  The objective's target score is 1, so a row's
# right-hand side and first residual are O(1) (O(c) with confidences): 1e-30, a residual norm
# of 1e-15, is past anything float32 resolves.  Below it the iterates of a row whose solution
# is ~0 (all its columns' embeddings ~0, as for links to pages without entries) shrink into
# float32's subnormal range (< 1.2e-38) within ~10 epochs of warm starts, where rs / pap
# divides two numbers of a few significant bits, and with fastmath's reciprocal overflows to
# inf: the CPU kernel's tables went NaN at epoch 10 on cnr-2000 (benchmarks/RESULTS.md).
RESIDUAL_FLOOR = 1e-30


def _rowdot(u: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.sum(u * v, axis=-1, keepdims=True)


def _safe_div(num: jax.Array, den: jax.Array, live: jax.Array) -> jax.Array:
    # Padding rows and converged rows (|r|^2 <= RESIDUAL_FLOOR) stay still instead of 0/0.
    ok = live & (den > 0)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def conjugate_gradient(matvec: MatVec, r0: jax.Array, x0: jax.Array, steps: int) -> jax.Array:
    """``steps`` CG iterations on A x = b from x0 (A symmetric positive definite per row).

    Takes the starting residual ``r0 = b - A x0`` rather than b: iALS forms it from the
    row's scores in one pass over the gathered rows fewer than b and A x0 separately.
    Warm-started from the previous embedding, a few steps suffice in ALS (Takács et al. 2011);
    with ``steps`` >= d the result is exact up to rounding.  A row stops once its
    |r|^2 <= :data:`RESIDUAL_FLOOR`.
    """
    r = r0
    p = r
    rs = _rowdot(r, r)

    def body(_, carry):
        x, r, p, rs = carry
        ap = matvec(p)
        live = rs > RESIDUAL_FLOOR
        alpha = _safe_div(rs, _rowdot(p, ap), live)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _rowdot(r, r)
        p = r + _safe_div(rs_new, rs, live) * p
        return x, r, p, rs_new

    x, *_ = jax.lax.fori_loop(0, steps, body, (x0, r, p, rs))
    return x


def cholesky(a: jax.Array, b: jax.Array) -> jax.Array:
    """Exact solve of a [R, d, d] x = b [R, d] for symmetric positive definite a.

    LAPACK is called one matrix at a time (``lax.map``).  jaxlib's batched CPU kernels
    split a batch over XLA's intra-op thread pool and block until the pieces finish;
    when as many such calls run at once as the pool has threads (two devices' programs,
    or independent buckets of one program), every pool thread waits and nothing runs:
    a deadlock seen here.  One matrix per call never splits, and costs the same.
    On an accelerator (no such pool) the batched kernels run instead: one launch per
    batch, not one per row.
    """
    if jax.default_backend() != "cpu":
        return cholesky_batched(a, b)

    def one(ab):
        factor = jnp.linalg.cholesky(ab[0])
        y = jax.lax.linalg.triangular_solve(factor, ab[1][:, None], left_side=True, lower=True)
        x = jax.lax.linalg.triangular_solve(factor, y, left_side=True, lower=True, transpose_a=True)
        return x[:, 0]

    return jax.lax.map(one, (a, b))


def cholesky_batched(a: jax.Array, b: jax.Array) -> jax.Array:
    """:func:`cholesky` as one batched factorisation and two batched triangular solves.

    What accelerators run (cuSOLVER's batched potrf on a GPU): :func:`cholesky`'s
    ``lax.map`` would launch a kernel per row there.
    """
    factor = jnp.linalg.cholesky(a)
    y = jax.lax.linalg.triangular_solve(factor, b[..., None], left_side=True, lower=True)
    return jax.lax.linalg.triangular_solve(factor, y, left_side=True, lower=True, transpose_a=True)[..., 0]


def block_coordinate(
    stats: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]],
    x0: jax.Array,
    gram: jax.Array,
    alpha0: float,
    reg: jax.Array,
    block: int,
) -> jax.Array:
    """One sweep of iALS++ subspace updates (Rendle et al. 2021) over blocks of ``block`` dims.

    For each block K of coordinates the row's objective is minimised exactly over x_K
    with the other coordinates fixed: (A_KK + alpha0 G_KK + lambda I) delta = -grad_K.
    Per row this costs O(|I_u| d b + d b^2) instead of Cholesky's O(|I_u| d^2 + d^3).

    Args:
      stats: (x, k) -> (observed part of A_KK [R, b, b], observed gradient
        sum_i c (<h_i, x> - 1) h_iK [R, b]) for the block starting at k.
      x0: [R, d] start (the current embeddings); gram: [d, d]; reg: [R].
      block: b, dividing d.
    """
    d = x0.shape[1]
    eye = jnp.eye(block, dtype=x0.dtype)

    def body(j, x):
        k = j * block
        a_obs, g_obs = stats(x, k)
        g_kk = jax.lax.dynamic_slice(gram, (k, k), (block, block))
        g_rows = jax.lax.dynamic_slice(gram, (0, k), (d, block))  # G[:, K]
        x_k = jax.lax.dynamic_slice_in_dim(x, k, block, axis=1)
        grad = g_obs + alpha0 * (x @ g_rows) + reg[:, None] * x_k
        a = a_obs + alpha0 * g_kk + reg[:, None, None] * eye
        delta = cholesky(a, -grad)
        return jax.lax.dynamic_update_slice_in_dim(x, x_k + delta, k, axis=1)

    return jax.lax.fori_loop(0, d // block, body, x0)
