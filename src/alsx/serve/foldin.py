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


def fold_in(h: np.ndarray | jax.Array, history: CSR, hp: HParams, packing: Packing = Packing(), *,
            gram: np.ndarray | None = None, n_cols: int | None = None) -> np.ndarray:
    """float32 [history.n_rows, d] row embeddings solved from each row's history.

    Args:
      h: [n_cols, d] fixed column table.
      history: CSR [n, n_cols] entries (with confidences) of the rows to solve.
      hp: the training hyper-parameters (reg, unobserved_weight, nu).
      gram, n_cols: when ``h`` holds only the rows the histories read (their columns
        renumbered to index ``h``): the whole table's Gramian [d, d] and row count, so
        the solve is the one against the whole table (see :func:`fold_in_sharded`).
    """
    h = jnp.asarray(h, jnp.float32)
    if history.n_cols != h.shape[0]:
        raise ValueError(f"history has {history.n_cols} columns but the table has {h.shape[0]} rows")
    side = jax.device_put(pack(history, h.shape[1], packing, dense_rows=True).arrays())
    w0 = jnp.zeros((history.n_rows, h.shape[1]), jnp.float32)
    exact = dataclasses.replace(hp, solver="cholesky")
    out = half_step(w0, h, side, exact.reg, exact.unobserved_weight, exact.nu, solver="cholesky", cg_steps=1,
                    gram=gram, n_other=n_cols)
    return np.asarray(out)


def fold_in_sharded(engine, state, history: CSR, hp: HParams) -> np.ndarray:
    """:func:`fold_in` against a ShardedEngine's column table without gathering it: this
    process fetches only the columns its histories read (a collective: every process calls
    it, with its own rows, possibly none) and the Gramian is summed over the shards."""
    used, remapped = np.unique(np.asarray(history.indices), return_inverse=True)
    rows = engine.host_rows(state, "h", used)
    gram = engine.host_gramian(state, "h")
    if history.n_rows == 0:
        return np.zeros((0, rows.shape[1]), np.float32)
    local = CSR(indptr=history.indptr, indices=remapped.astype(np.int32).reshape(-1), values=history.values,
                n_cols=max(len(used), 1))
    table = rows if len(used) else np.zeros((1, rows.shape[1]), np.float32)
    return fold_in(table, local, hp, gram=gram, n_cols=history.n_cols)
