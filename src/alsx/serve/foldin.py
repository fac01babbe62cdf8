"""Fold-in: solve new or held-out rows against a fixed column table.

A folded-in row gets exactly the row update of training, with the training
regulariser lambda_u = reg * (|I_u| + alpha0 * n_cols)^nu (ALX folded in with an
unscaled lambda, so its held-out rows were scored under a different objective).
The solve is exact (Cholesky): there is no previous embedding to warm-start from.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from alsx.config import HParams, Packing
from alsx.core.step import half_step
from alsx.data.matrix import CSR
from alsx.data.packing import pack


def fold_in(h: np.ndarray | jax.Array, history: CSR, hp: HParams, packing: Packing = Packing()) -> np.ndarray:
    """float32 [history.n_rows, d] row embeddings solved from each row's history.

    Args:
      h: [n_cols, d] fixed column table.
      history: CSR [n, n_cols] entries (with confidences) of the rows to solve.
      hp: the training hyper-parameters (reg, unobserved_weight, nu).
    """
    h = jnp.asarray(h, jnp.float32)
    if history.n_cols != h.shape[0]:
        raise ValueError(f"history has {history.n_cols} columns but the table has {h.shape[0]} rows")
    side = jax.device_put(pack(history, h.shape[1], packing, dense_rows=True).arrays())
    w0 = jnp.zeros((history.n_rows, h.shape[1]), jnp.float32)
    exact = dataclasses.replace(hp, solver="cholesky")
    out = half_step(w0, h, side, exact.reg, exact.unobserved_weight, exact.nu, solver="cholesky", cg_steps=1)
    return np.asarray(out)
