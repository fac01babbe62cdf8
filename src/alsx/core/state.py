"""Table initialisation and the training state."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from alsx.compile_cache import cpu_jit
from alsx.config import HParams


def storage_dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def init_table(
    key: jax.Array, n: int, dim: int, scale: float, dtype: str = "float32", dist: str = "normal"
) -> jax.Array:
    """[n, dim] random entries stored in ``dtype``: N(0, (scale / sqrt(dim))^2) for ``dist='normal'``,
    U[0, 2 scale / sqrt(dim)) for ``'uniform'`` (all positive, as implicit starts)."""
    s = scale / np.sqrt(dim)
    if dist == "normal":
        # The barrier keeps XLA from fusing the scaling into the sampler: inside jit the draws
        # then round exactly as the separate programs of an eager call do (same tables as before).
        t = jax.lax.optimization_barrier(jax.random.normal(key, (n, dim), jnp.float32)) * s
    elif dist == "uniform":
        t = jax.random.uniform(key, (n, dim), jnp.float32, 0.0, 2.0 * s)
    else:
        raise ValueError(f"dist must be 'normal' or 'uniform', got {dist!r}")
    return t.astype(storage_dtype(dtype))


@dataclasses.dataclass
class ALSState:
    """The learned tables and how far training got.

    Attributes:
      w: [n_rows, d] row embeddings; for tied models the one shared table.
      h: [n_cols, d] column embeddings; ``h is w`` when tied.
      epoch: completed epochs.
      basis: None, or an orthogonal [d, d] float64 Q with the tables stored rotated,
        w = w_original @ Q (the CPU backend's eigenbasis; ``engine.to_numpy`` undoes it).
    """

    w: jax.Array
    h: jax.Array
    epoch: int = 0
    tied: bool = False
    basis: np.ndarray | None = None


@functools.partial(cpu_jit, static_argnames=("n_rows", "n_cols", "dim", "scale", "dtype", "dist"))
def init_tables(seed, n_rows: int, n_cols: int, dim: int, scale, dtype: str, dist: str) -> tuple[jax.Array, jax.Array]:
    """[n_rows, dim], [n_cols, dim] tables from ``seed`` (:func:`init_table` with the two halves of its
    key; ``n_cols`` 0 for a tied model), one compiled program instead of eight."""
    kw, kh = jax.random.split(jax.random.PRNGKey(seed))
    return init_table(kw, n_rows, dim, scale, dtype, dist), init_table(kh, n_cols, dim, scale, dtype, dist)


def init_state(seed: int, n_rows: int, n_cols: int, hp: HParams, tied: bool) -> ALSState:
    """Fresh tables as ``hp`` asks (dim, init, init_scale, dtype); one table when ``tied``."""
    w, h = init_tables(seed, n_rows, 0 if tied else n_cols, hp.dim, hp.init_scale, hp.dtype, hp.init)
    return ALSState(w=w, h=w if tied else h, epoch=0, tied=tied)
