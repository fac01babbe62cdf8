"""The iALS objective (Rendle et al. 2021) and its frequency-scaled regulariser.

L(W, H) = sum_{(u,i) observed} c_ui (<w_u, h_i> - 1)^2
        + alpha0 * sum_{all (u,i)} <w_u, h_i>^2          (= alpha0 * <W^T W, H^T H>_F)
        + sum_u lambda_u |w_u|^2 + sum_i lambda_i |h_i|^2
lambda_u = reg * (|I_u| + alpha0 * n_cols) ** nu
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from alsx.compile_cache import cpu_jit
from alsx.core.normal_eq import gramian


def row_regularisation(counts: jax.Array, n_other: int, reg: float, alpha0: float, nu: float) -> jax.Array:
    """float32 [n] lambda per row from its entry count and the other side's size."""
    return reg * jnp.power(counts.astype(jnp.float32) + alpha0 * n_other, nu)


@dataclasses.dataclass(frozen=True)
class Loss:
    """The objective's parts after an epoch (plain floats)."""

    observed: float
    unobserved: float
    regularisation: float

    @property
    def total(self) -> float:
        return self.observed + self.unobserved + self.regularisation

    def to_dict(self) -> dict:
        return {
            "observed": self.observed,
            "unobserved": self.unobserved,
            "regularisation": self.regularisation,
            "total": self.total,
        }


def unobserved_term(w: jax.Array, h: jax.Array, alpha0: float) -> jax.Array:
    """alpha0 * sum_{u,i} <w_u, h_i>^2 through the two Gramians, never the dense product."""
    return alpha0 * jnp.sum(gramian(w) * gramian(h))


def regularisation_term(table: jax.Array, lam: jax.Array) -> jax.Array:
    """sum_u lam_u |t_u|^2 for table [n, d], lam [n]."""
    t = table.astype(jnp.float32)
    return jnp.sum(lam * jnp.sum(t * t, axis=1))


@functools.partial(cpu_jit, static_argnames=("n_rows", "n_cols"))
def table_terms(w, h, counts_w, counts_h, reg, alpha0, nu, n_rows: int, n_cols: int):
    """(G_w [d, d], G_h [d, d], the regularisation term) of tables w [n_rows, d] and h [n_cols, d]
    with entries per row ``counts_w`` [n_rows], ``counts_h`` [n_cols]: one program, not a dozen."""
    lam_w = row_regularisation(counts_w, n_cols, reg, alpha0, nu)
    lam_h = row_regularisation(counts_h, n_rows, reg, alpha0, nu)
    return gramian(w), gramian(h), regularisation_term(w, lam_w) + regularisation_term(h, lam_h)
