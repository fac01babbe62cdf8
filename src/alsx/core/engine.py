"""Training engines: own the packed data on device and run epochs.

An engine turns (row CSR, column CSR, hyper-parameters) into device arrays once,
then ``epoch`` maps an :class:`ALSState` to the next one.  ``LocalEngine`` runs on
one device; the sharded engine (``alsx.core.sharding``) offers the same methods.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from alsx.compile_cache import enable_compile_cache
from alsx.config import HParams, Packing
from alsx.core.objective import Loss, regularisation_term, row_regularisation, unobserved_term
from alsx.core.state import ALSState, init_state
from alsx.core.step import half_step, observed_loss
from alsx.data.matrix import CSR
from alsx.data.packing import PackedSide, pack


class Engine(Protocol):
    hp: HParams

    def init_state(self, seed: int) -> ALSState: ...

    def epoch(self, state: ALSState) -> ALSState: ...

    def loss(self, state: ALSState) -> Loss: ...

    def to_numpy(self, state: ALSState) -> tuple[np.ndarray, np.ndarray]: ...


# --- set_hparams (minimal version for `alsx tune`; the engine helper owns the final one) -------------
REPACK_FIELDS = ("dim", "solver", "dtype", "block_size")


def check_swappable(old: HParams, new: HParams) -> HParams:
    """``new`` if an engine built for ``old`` can train it as is, else ValueError naming the fields
    whose change needs a new engine (re-packing or new table shapes): dim, solver, dtype, block_size."""
    changed = [f for f in REPACK_FIELDS if getattr(old, f) != getattr(new, f)]
    if changed:
        raise ValueError(f"set_hparams cannot change {', '.join(changed)} (needs a new engine): "
                         + ", ".join(f"{f} {getattr(old, f)!r} -> {getattr(new, f)!r}" for f in changed))
    return new
# --- end set_hparams -------------------------------------------------------------------------------


@dataclasses.dataclass
class PackStats:
    """What packing cost: fill ratios and seconds, for logs and benchmarks."""

    row_fill: float
    col_fill: float
    seconds: float


class LocalEngine:
    """iALS on the default device.

    Args:
      rows: CSR of the training matrix (rows of W against columns of H).
      cols: CSR of its transpose.
      hp: hyper-parameters.
      packing: block layout.
      tied: one table for rows and columns (square matrices only).
    """

    def __init__(self, rows: CSR, cols: CSR, hp: HParams, packing: Packing = Packing(), tied: bool = False):
        if tied and rows.n_rows != rows.n_cols:
            raise ValueError(f"tied embeddings need a square matrix, got {rows.n_rows} x {rows.n_cols}")
        t = time.perf_counter()
        dense = hp.solver == "cholesky"
        self.hp = hp
        self.tied = tied
        self.n_rows, self.n_cols = rows.n_rows, rows.n_cols
        row_side: PackedSide = pack(rows, hp.dim, packing, dense_rows=dense)
        col_side: PackedSide = pack(cols, hp.dim, packing, dense_rows=dense)
        self.stats = PackStats(row_side.fill_ratio, col_side.fill_ratio, time.perf_counter() - t)
        self._rows = jax.device_put(row_side.arrays())
        self._cols = jax.device_put(col_side.arrays())

    def init_state(self, seed: int) -> ALSState:
        hp = self.hp
        return init_state(seed, self.n_rows, self.n_cols, hp, self.tied)

    def _half(self, w, h, side):
        hp = self.hp
        return half_step(w, h, side, hp.reg, hp.unobserved_weight, hp.nu, solver=hp.solver, cg_steps=hp.cg_steps,
                         block_size=hp.block_width("jax"))

    def epoch(self, state: ALSState) -> ALSState:
        w = self._half(state.w, state.h, self._rows)
        h = w if self.tied else state.h
        h = self._half(h, w, self._cols)
        if self.tied:
            w = h
        return ALSState(w=w, h=h, epoch=state.epoch + 1, tied=self.tied)

    def loss(self, state: ALSState) -> Loss:
        hp = self.hp
        lam_w = row_regularisation(self._rows["counts"], self.n_cols, hp.reg, hp.unobserved_weight, hp.nu)
        lam_h = row_regularisation(self._cols["counts"], self.n_rows, hp.reg, hp.unobserved_weight, hp.nu)
        obs = observed_loss(state.w, state.h, self._rows)
        unobs = unobserved_term(state.w, state.h, hp.unobserved_weight)
        reg = regularisation_term(state.w, lam_w) + regularisation_term(state.h, lam_h)
        return Loss(float(obs), float(unobs), float(reg))

    def to_numpy(self, state: ALSState) -> tuple[np.ndarray, np.ndarray]:
        w = np.array(state.w.astype(jnp.float32))
        return w, (w if self.tied else np.array(state.h.astype(jnp.float32)))

    def set_hparams(self, hp: HParams) -> None:
        """Swaps reg, unobserved_weight, nu, cg_steps, init, init_scale (the packed blocks stay)."""
        self.hp = check_swappable(self.hp, hp)


BACKENDS = ("auto", "cpu", "jax")


def resolve_backend(backend: str, hp: HParams) -> str:
    """'cpu' or 'jax' for ``backend`` ('auto': the CPU kernel wherever it applies)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "jax":
        return "jax"
    from alsx.core.cpu import cpu_backend_reason

    why_not = cpu_backend_reason(hp)
    if backend == "cpu" and why_not is not None:
        raise ValueError(f"backend='cpu' cannot train this model: {why_not}; use backend='jax'")
    return "jax" if why_not else "cpu"


def make_engine(rows: CSR, cols: CSR, hp: HParams, packing: Packing = Packing(), tied: bool = False,
                backend: str = "auto") -> Engine:
    """The training engine for this machine and model.

    backend 'cpu' (what 'auto' picks on a CPU-only host, one process, CG or block on float32 tables):
    ``CpuEngine``, fused Numba kernels on all cores.  Otherwise (backend 'jax'): LocalEngine
    on one device, or a ShardedEngine over every device of every process.

    In a multi-process run each process keeps only the rows its shards own (plus the
    global row lengths), so host memory per process shrinks with the process count;
    with memory-mapped CSRs it also reads only those rows.
    """
    if resolve_backend(backend, hp) == "cpu":
        from alsx.core.cpu import CpuEngine

        return CpuEngine(rows, cols, hp, packing, tied)
    enable_compile_cache()  # before the first compile: reruns on the same shapes load the programs
    if jax.device_count() == 1:
        return LocalEngine(rows, cols, hp, packing, tied)
    from alsx.core.sharded import ShardedEngine, engine_layouts
    from alsx.core.sharding import local_shards, make_mesh
    from alsx.data.shard_packing import local_part

    mesh = make_mesh()
    if jax.process_count() == 1:
        return ShardedEngine(rows, cols, hp, packing, tied=tied, mesh=mesh)
    # Each process owns a contiguous range of rows and of columns: from memory-mapped CSRs
    # (a WebGraph dataset) it reads just those slices.
    rc, cc = rows.lengths(), cols.lengths()
    mine = local_shards(mesh)
    row_layout, col_layout = engine_layouts(rc, cc, mesh, tied)
    my_rows = local_part(rows, row_layout, mine)
    my_cols = local_part(cols, col_layout, mine)
    return ShardedEngine(my_rows, my_cols, hp, packing, tied=tied, mesh=mesh, row_counts=rc, col_counts=cc)
