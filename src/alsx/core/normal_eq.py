"""The pieces of the iALS normal equations for a block of gathered rows.

For a row u with observed columns I_u, confidences c_ui and column embeddings h_i:

    A_u = sum_i c_ui h_i h_i^T + alpha0 * G + lambda_u * I,   G = H^T H
    b_u = sum_i c_ui h_i

``A_u`` is only formed for the exact solver; CG applies it through
:func:`block_matvec` so a step costs O(|I_u| d) instead of O(|I_u| d^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def gramian(table: jax.Array) -> jax.Array:
    """[d, d] float32 G = table^T table (rows of any dtype, accumulated in float32)."""
    t = table.astype(jnp.float32)
    return jnp.matmul(t.T, t, precision=HIGHEST)


def block_rhs(hg: jax.Array, conf: jax.Array) -> jax.Array:
    """[S, d] sum_l conf[s, l] * hg[s, l] for hg [S, L, d], conf [S, L]."""
    return jnp.einsum("sl,sld->sd", conf, hg, precision=HIGHEST)


def block_matvec(hg: jax.Array, conf: jax.Array, x: jax.Array) -> jax.Array:
    """[S, d] sum_l conf * <hg[s, l], x[s]> * hg[s, l]: the observed part of A_s x_s."""
    q = conf * jnp.einsum("sld,sd->sl", hg, x, precision=HIGHEST)
    return jnp.einsum("sl,sld->sd", q, hg, precision=HIGHEST)


def block_residual(hg: jax.Array, conf: jax.Array, x: jax.Array) -> jax.Array:
    """[S, d] sum_l conf * (1 - <hg[s, l], x[s]>) * hg[s, l] = b_s - (observed part of A_s) x_s.

    The same value as ``block_rhs - block_matvec`` with one pass over ``hg`` fewer.
    """
    q = conf * (1.0 - block_scores(hg, x))
    return jnp.einsum("sl,sld->sd", q, hg, precision=HIGHEST)


def block_lhs(hg: jax.Array, conf: jax.Array) -> jax.Array:
    """[S, d, d] sum_l conf * hg hg^T: the observed part of A_s."""
    return jnp.einsum("sld,sle->sde", hg * conf[..., None], hg, precision=HIGHEST)


def block_scores(hg: jax.Array, x: jax.Array) -> jax.Array:
    """[S, L] <hg[s, l], x[s]>."""
    return jnp.einsum("sld,sd->sl", hg, x, precision=HIGHEST)


def add_shared(ax: jax.Array, x: jax.Array, gram: jax.Array, alpha0: float, reg: jax.Array) -> jax.Array:
    """[R, d] ax + alpha0 * x G + reg * x: the row-independent terms of A x."""
    return ax + alpha0 * jnp.matmul(x, gram, precision=HIGHEST) + reg[:, None] * x


def shared_lhs(a: jax.Array, gram: jax.Array, alpha0: float, reg: jax.Array) -> jax.Array:
    """[R, d, d] a + alpha0 * G + reg * I."""
    eye = jnp.eye(gram.shape[0], dtype=a.dtype)
    return a + alpha0 * gram + reg[:, None, None] * eye
