"""Batched linear solvers behind one calling convention.

Each solver takes the right-hand sides ``b`` [R, d], a warm start ``x0`` [R, d]
and either a matrix-free ``matvec`` ([R, d] -> [R, d]) or dense ``a`` [R, d, d].
Rows are independent systems; every operation is batched over R.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

MatVec = Callable[[jax.Array], jax.Array]


def _rowdot(u: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.sum(u * v, axis=-1, keepdims=True)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    # Padding rows and converged rows have zero residual: keep them still instead of 0/0.
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def conjugate_gradient(matvec: MatVec, b: jax.Array, x0: jax.Array, steps: int) -> jax.Array:
    """``steps`` CG iterations on A x = b from x0 (A symmetric positive definite per row).

    Warm-started from the previous embedding, a few steps suffice in ALS (Takács et al. 2011);
    with ``steps`` >= d the result is exact up to rounding.
    """
    r = b - matvec(x0)
    p = r
    rs = _rowdot(r, r)

    def body(_, carry):
        x, r, p, rs = carry
        ap = matvec(p)
        alpha = _safe_div(rs, _rowdot(p, ap))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _rowdot(r, r)
        p = r + _safe_div(rs_new, rs) * p
        return x, r, p, rs_new

    x, *_ = jax.lax.fori_loop(0, steps, body, (x0, r, p, rs))
    return x


def cholesky(a: jax.Array, b: jax.Array) -> jax.Array:
    """Exact solve of a [R, d, d] x = b [R, d] for symmetric positive definite a."""
    factor = jnp.linalg.cholesky(a)
    y = jax.lax.linalg.triangular_solve(factor, b[..., None], left_side=True, lower=True)
    x = jax.lax.linalg.triangular_solve(factor, y, left_side=True, lower=True, transpose_a=True)
    return x[..., 0]
