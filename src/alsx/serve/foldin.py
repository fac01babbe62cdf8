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


def fold_in(
    h: np.ndarray | jax.Array,
    history: CSR,
    hp: HParams,
    packing: Packing = Packing(),
    *,
    gram: np.ndarray | None = None,
    n_cols: int | None = None,
) -> np.ndarray:
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
    out = half_step(
        w0,
        h,
        side,
        exact.reg,
        exact.unobserved_weight,
        exact.nu,
        solver="cholesky",
        cg_steps=1,
        gram=gram,
        n_other=n_cols,
    )
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
    local = CSR(
        indptr=history.indptr,
        indices=remapped.astype(np.int32).reshape(-1),
        values=history.values,
        n_cols=max(len(used), 1),
    )
    table = rows if len(used) else np.zeros((1, rows.shape[1]), np.float32)
    return fold_in(table, local, hp, gram=gram, n_cols=history.n_cols)


# ---------------------------------------------------------------- NumPy fold-in for serving
# Serving folds in a few rows per call: a float64 NumPy solve per row costs microseconds and
# compiles nothing, where ``fold_in`` packs blocks and compiles a program per shape.
SOLVE_ROWS = 256  # rows whose d x d systems are stacked for one batched np.linalg.solve


def gramian(table: np.ndarray, block: int = 4096) -> np.ndarray:
    """float64 [d, d] table^T table of a [n, d] table: float32 products of ``block`` rows summed
    in float64 (a float64 copy of gowalla's d=128 table would be 42 MB and a slower product)."""
    t = np.asarray(table)
    out = np.zeros((t.shape[1], t.shape[1]), np.float64)
    for start in range(0, t.shape[0], block):
        b = t[start : start + block]
        out += b.T @ b
    return out


def row_system(
    h: np.ndarray, gram: np.ndarray, cols: np.ndarray, conf: np.ndarray, hp: HParams, n_other: int
) -> tuple[np.ndarray, np.ndarray]:
    """The normal equations of one row of the training objective, float64.

    A = sum_j c_j h_j h_j^T + alpha0 G + lambda_u I  [d, d],  b = sum_j c_j h_j  [d], with
    lambda_u = reg * (|I_u| + alpha0 * n_other) ** nu (``tests/reference.py: solve_rows``).

    Args:
      h: [n_other, d] the fixed table; gram: its float64 Gramian [d, d].
      cols: int [|I_u|] the row's entries; conf: [|I_u|] their confidences.
    """
    hi = np.asarray(h[cols], np.float64)  # [|I_u|, d]
    c = np.asarray(conf, np.float64)
    lam = hp.reg * (len(cols) + hp.unobserved_weight * n_other) ** hp.nu
    a = (hi.T * c) @ hi + hp.unobserved_weight * gram + lam * np.eye(gram.shape[0])
    return a, hi.T @ c


def solve_histories(h: np.ndarray, history: CSR, hp: HParams, gram: np.ndarray | None = None) -> np.ndarray:
    """float32 [history.n_rows, d]: each row's exact optimum against the fixed table ``h`` [n_cols, d]
    (the same solution as :func:`fold_in`; a row without entries gets 0).

    Raises:
      ValueError: a singular system (reg = 0 and unobserved_weight = 0 with fewer than d entries).
    """
    h = np.asarray(h)
    if history.n_cols != h.shape[0]:
        raise ValueError(f"history has {history.n_cols} columns but the table has {h.shape[0]} rows")
    gram = gramian(h) if gram is None else gram
    out = np.zeros((history.n_rows, h.shape[1]), np.float32)
    for start in range(0, history.n_rows, SOLVE_ROWS):
        rows = range(start, min(start + SOLVE_ROWS, history.n_rows))
        systems = [row_system(h, gram, *history.row(u), hp, h.shape[0]) for u in rows]
        try:
            x = np.linalg.solve(np.stack([a for a, _ in systems]), np.stack([b for _, b in systems])[..., None])
        except np.linalg.LinAlgError:
            raise ValueError(
                "a fold-in system is singular (reg = 0 and unobserved_weight = 0 with fewer "
                "entries than dim): train with reg > 0"
            ) from None
        out[start : start + len(systems)] = x[..., 0]
    out[history.lengths() == 0] = 0.0
    return out


def confidences(values: np.ndarray, alpha: float | None) -> np.ndarray:
    """float32 c = 1 + alpha * value (Hu et al.), or 1 for every entry when alpha is None: as
    ``Interactions.confidence`` makes them for training."""
    if alpha is None:
        return np.ones(len(values), np.float32)
    return (1.0 + alpha * np.asarray(values, np.float64)).astype(np.float32)
