"""The CPU backend: the CG half-epoch as one fused Numba kernel per side.

On a CPU, XLA runs the padded-block half-step (``alsx.core.step``) as separate gather,
einsum and scatter loops over materialised ``[rows, width, d]`` blocks.  Here each row is
solved start to finish while its column embeddings sit in L1: read the CSR row, form the
residual, run the CG steps, write the result.  Nothing is padded or gathered up front, so
memory is the tables (during an epoch two of the row side and three of the column side:
see ``CpuEngine.epoch``) plus the two CSRs.

The shared term alpha0 * G + lambda_u * I of every row's matrix would cost O(d^2) per row
and CG step.  The objective is unchanged when both tables are rotated by the same
orthogonal Q (scores, Gramian products and norms are invariant), and CG iterates rotate
along with the problem.  So each half-step rotates both tables into the eigenbasis of the
fixed table's Gramian, G = Q diag(e) Q^T, where the shared term is the diagonal
alpha0 * e + lambda_u: O(d) per row and step.  The rotations and the Gramian are three
BLAS matrix products per half-step, at close to the machine's sgemm peak.  Tables are kept
in the rotated basis between epochs; ``ALSState.basis`` records it and ``to_numpy``
returns the tables in the original one.

The iALS++ ('block') solver runs in the same basis with its own kernel
(``alsx.core.cpu_block``); everything else here is shared.  The CG kernels are in
``alsx.core.cpu_kernels``, table memory and BLAS threads in ``alsx.core.cpu_host``, the
per-phase profiler in ``alsx.core.cpu_profile``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import weakref

import numba
import numpy as np

from alsx.config import HParams, Packing
from alsx.core.cpu_block import block_rows, transpose_positions
from alsx.core.cpu_host import ROW_COST, RowThreads, TablePool, as_table, eigenbasis, empty_table, work_blocks
from alsx.core.cpu_kernels import FLOOR, cg_rows, observed_loss
from alsx.core.cpu_profile import profile_half_step
from alsx.core.engine import SIDES, Engine, PackStats
from alsx.core.objective import row_regularisation
from alsx.core.state import ALSState, init_state
from alsx.data.matrix import CSR
from alsx.errors import DivergenceError

# Part of this module's interface (tests and benchmarks reach the kernels and helpers through it).
__all__ = [
    "ROW_COST",
    "RowThreads",
    "TablePool",
    "block_rows",
    "profile_half_step",
    "work_blocks",
    "CpuEngine",
    "half_step",
    "cpu_backend_reason",
    "numba_threads",
]
_FLOOR, _cg_rows = FLOOR, cg_rows

BLOCKS_PER_THREAD = 64
# The block solver hands each half-step's final residuals on to the next (see
# CpuEngine._handoffs) and recomputes them from the tables every this many epochs.
RESCORE_EVERY = 8


# ============================================================================ one half-step
def half_step(
    w: np.ndarray,
    h: np.ndarray,
    side: CSR,
    lam: np.ndarray,
    alpha0: float,
    cg_steps: int,
    starts: np.ndarray,
    threads: RowThreads,
    *,
    tied: bool = False,
    out: np.ndarray | None = None,
    h_out: np.ndarray | None = None,
    timings: dict | None = None,
    block_size: int = 0,
    sweeps: int = 1,
    handoff: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-solves every row of ``w`` [n, d] against the fixed ``h`` [m, d] by ``cg_steps`` CG steps,
    or with ``block_size`` > 0 by ``sweeps`` iALS++ sweeps over blocks of that size
    (``alsx.core.cpu_block``).

    Both tables are first rotated by Q, the eigenvectors of h^T h (for ``tied``, w is h),
    with BLAS on ``threads``.  Returns (new w, h @ Q, Q [d, d] float64): both tables in the new basis.

    out / h_out: optional float32 buffers for the new w and for h @ Q; reusing them spares
    the page faults of fresh 100 MB arrays every half-step.  ``out`` may not alias ``w`` or
    ``h``; ``h_out`` may be ``h`` itself, which is then rotated in place (chunk by chunk).
    The warm start w @ Q is written into ``out`` and solved in place (each kernel reads a
    row's warm start before it writes that row), so a half-step needs one [n, d] table
    besides its inputs, not two (2.6 GB less at 10M rows and d=64).
    ``timings`` (optional) accumulates seconds per phase: gramian, rotate, solve.
    ``handoff``: residual arguments of :func:`alsx.core.cpu_block.block_rows` (block solver only).
    """
    t0 = time.perf_counter()
    with threads.blas():
        e, q = eigenbasis(h, threads)
        t1 = time.perf_counter()
        q32 = q.astype(np.float32)
        if h_out is h:
            h_rot = threads.rotate_in_place(h, q32)
        else:
            h_rot = threads.matmul(h, q32, out=empty_table(*h.shape) if h_out is None else h_out)
        out = empty_table(*w.shape) if out is None else out
        # tied: the warm start is the fixed table itself, which must stay intact while rows are solved
        w_rot = h_rot if tied else threads.matmul(w, q32, out=out)
    t2 = time.perf_counter()
    shared = (alpha0 * e).astype(np.float32)
    if block_size:
        block_rows(side, starts, w_rot, h_rot, shared, lam, block_size, sweeps, out, **(handoff or {}))
    else:
        cg_rows(side.indptr, side.indices, side.values, starts, w_rot, h_rot, shared, lam, cg_steps, out)
    if timings is not None:
        t3 = time.perf_counter()
        for k, v in (("gramian", t1 - t0), ("rotate", t2 - t1), ("solve", t3 - t2)):
            timings[k] = timings.get(k, 0.0) + v
    return out, h_rot, q


def numba_threads() -> int:
    return numba.get_num_threads()


# ============================================================================ engine
def _as_csr32(c: CSR) -> CSR:
    """The CSR with the dtypes the kernel is compiled for (no copy when they already match)."""
    return dataclasses.replace(
        c,
        indptr=np.ascontiguousarray(c.indptr, np.int64),
        indices=np.ascontiguousarray(c.indices, np.int32),
        values=np.ascontiguousarray(c.values, np.float32),
    )


class CpuEngine(Engine):
    """iALS with the CG or the iALS++ ('block') solver on the host CPU, one process, all cores.

    With ``solver='cg'``: same interface and iteration as ``LocalEngine``; up to rounding the same
    results (the kernel's CG vectors are float64, LocalEngine's float32: ``alsx.core.cpu_kernels``).  With ``solver='block'``: ``block_sweeps`` sweeps of ``hp.block_size``
    blocks per half-step in the eigenbasis (``alsx.core.cpu_block``); the same objective and
    fixed point as LocalEngine's block solver, but not the same iterates (its blocks are in
    the original basis).  Tables are NumPy float32 arrays; ``state.basis`` is the rotation
    they are stored in (see the module docstring).

    Args:
      rows: CSR of the training matrix; cols: CSR of its transpose.
      hp: hyper-parameters (solver 'cg' or 'block', dtype 'float32').
      packing: unused (no padded blocks); accepted for the engine-factory signature.
      tied: one table for rows and columns (square matrices only).
      block_sweeps: sweeps per half-step of the block solver (the JAX engine does one).
    """

    kind = "cpu"

    def __init__(
        self,
        rows: CSR,
        cols: CSR,
        hp: HParams,
        packing: Packing | None = None,
        tied: bool = False,
        block_sweeps: int = 1,
    ):
        if hp.solver not in ("cg", "block") or hp.dtype != "float32":
            raise ValueError(
                f"the CPU backend runs solver='cg' or 'block' on float32 tables, got "
                f"solver={hp.solver!r} dtype={hp.dtype!r}; use backend='jax' for the others"
            )
        if block_sweeps < 1:
            raise ValueError(f"block_sweeps must be >= 1, got {block_sweeps}")
        if tied and rows.n_rows != rows.n_cols:
            raise ValueError(f"tied embeddings need a square matrix, got {rows.n_rows} x {rows.n_cols}")
        t = time.perf_counter()
        self.hp, self.tied = hp, tied
        self._solve = dict(block_size=hp.block_width("cpu"), sweeps=block_sweeps)
        self.n_rows, self.n_cols = rows.n_rows, rows.n_cols
        self.rows, self.cols = _as_csr32(rows), _as_csr32(cols)
        n_blocks = BLOCKS_PER_THREAD * numba_threads()
        self._starts = (work_blocks(self.rows.indptr, n_blocks), work_blocks(self.cols.indptr, n_blocks))
        self.hparams_changed()
        self.timings: dict[str, float] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._pool = TablePool()
        self._threads = RowThreads(numba_threads())
        self._epoch_args: tuple = ((), ())  # per epoch: the half-steps' residual hand-offs
        # block solver: the entry permutations between the two sides, and weak references to the
        # tables of the state whose residuals the last epoch left in _buffers['r_rows']
        self._perm: tuple | None = None
        self._residuals_of: tuple | None = None
        self.stats = PackStats(1.0, 1.0, time.perf_counter() - t)  # CSR as is: no padding

    def _lambdas(self, side: CSR, n_other: int) -> np.ndarray:
        hp = self.hp
        return np.asarray(row_regularisation(side.lengths(), n_other, hp.reg, hp.unobserved_weight, hp.nu))

    def hparams_changed(self) -> None:
        """lambda per row depends on reg, unobserved_weight and nu."""
        self._lam = (self._lambdas(self.rows, self.n_cols), self._lambdas(self.cols, self.n_rows))

    def describe(self) -> str:
        return f"CPU kernels on {numba_threads()} threads"

    def kernel_args(self, side: str) -> tuple[CSR, np.ndarray, np.ndarray, RowThreads, dict]:
        """(CSR, lambda [n], row cuts, BLAS threads, block solver options) of ``side``'s kernels (profilers)."""
        i = SIDES.index(side)
        return (self.rows, self.cols)[i], self._lam[i], self._starts[i], self._threads, dict(self._solve)

    def init_state(self, seed: int) -> ALSState:
        """The same start as the JAX engines (same seed, same tables)."""
        hp = self.hp
        st = init_state(seed, self.n_rows, self.n_cols, hp, self.tied)
        w = as_table(st.w, pool=self._pool)
        return ALSState(w=w, h=w if self.tied else as_table(st.h, pool=self._pool), epoch=0, tied=self.tied)

    def _buffer(self, name: str, n: int) -> np.ndarray:
        """A private [n, d] float32 array kept between epochs (never part of a returned state)."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = empty_table(n, self.hp.dim)
        return buf

    def release(self) -> None:
        """Gives back the buffers and spare pooled tables kept for the next epoch (call once
        training is over: the tables of live states are untouched).  At 1M rows and d=1024
        this is 8 GB the final ``to_numpy`` would otherwise sit on top of."""
        self._buffers.clear()
        self._pool = TablePool()
        self._perm = self._residuals_of = None

    def _handoffs(self, state: ALSState) -> tuple[dict, dict]:
        """Residual hand-off arguments of the two half-steps of a 'block' epoch.

        Each half-step ends with the residuals sqrt(c) (1 - <w_u, h_i>) of its solved rows
        against the fixed table: exactly the scores the next half-step starts from (the
        tables' rotation in between leaves scores unchanged).  So each hands them on in the
        other side's entry order and the next one skips its score pass (a fifth of a d=1024
        sweep on ml1m).  The first half-step takes them only when ``state`` is the one the
        previous epoch returned, and recomputes them every RESCORE_EVERY epochs to keep the
        incremental float32 updates from drifting.  Nothing for CG or tied tables.
        """
        if not self._solve["block_size"] or self.tied:
            return {}, {}
        if self._perm is None:
            self._perm = transpose_positions(self.rows, self.cols) or ()
        if not self._perm:
            return {}, {}
        nnz = self.rows.nnz
        r_rows = self._buffers.get("r_rows")
        if r_rows is None:
            r_rows = self._buffers["r_rows"] = np.empty(nnz, np.float32)
            self._buffers["r_cols"] = np.empty(nnz, np.float32)
        r_cols = self._buffers["r_cols"]
        ref = self._residuals_of
        fresh = ref is not None and ref[0]() is state.w and ref[1]() is state.h and state.epoch % RESCORE_EVERY != 0
        return (
            dict(residuals_in=r_rows if fresh else None, residuals_out=r_cols, perm=self._perm[0]),
            dict(residuals_in=r_cols, residuals_out=r_rows, perm=self._perm[1]),
        )

    def half_step(self, x: np.ndarray, other: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
        """:func:`half_step` of ``side`` into reused memory; returns (new x, other rotated into the new
        basis).  The new table comes from the :class:`TablePool` (memory of no live array, so earlier
        states stay valid); the fixed table is rotated into a private buffer for the row side and in
        place for the column side (it is the table the row side just solved), so an epoch holds two
        [n, d] row tables (the state's and the new one) and three [m, d] column tables."""
        i, d = SIDES.index(side), self.hp.dim
        n = (self.n_rows, self.n_cols)[i]
        if self.tied:
            out = self._buffer("t_out", n) if i == 0 else self._pool.take(n, d)
            rotated = self._buffer("t_rot", n)
        else:
            out = self._pool.take(n, d)
            rotated = self._buffer("h_rot", len(other)) if i == 0 else other
        new, other_rot, q = half_step(
            x,
            other,
            (self.rows, self.cols)[i],
            self._lam[i],
            self.hp.unobserved_weight,
            self.hp.cg_steps,
            self._starts[i],
            self._threads,
            tied=self.tied,
            out=out,
            h_out=rotated,
            timings=self.timings,
            handoff=self._epoch_args[i] or None,
            **self._solve,
        )
        self._rotations.append(q)
        return new, other_rot

    def epoch(self, state: ALSState) -> ALSState:
        """Both half-steps (:func:`alternate`) in the eigenbasis; the new state's basis composes their
        rotations.  A non-finite table is reported with its epoch."""
        first, second = self._epoch_args = self._handoffs(state)
        self._rotations: list[np.ndarray] = []
        try:
            new = super().epoch(state)
        except DivergenceError as e:
            raise DivergenceError(
                f"training diverged in epoch {state.epoch + 1}: {e} (the tables after epoch {state.epoch} were finite)"
            ) from None
        if first:
            self._residuals_of = (weakref.ref(new.w), weakref.ref(new.h))
        basis = np.eye(self.hp.dim) if state.basis is None else state.basis
        q1, q2 = self._rotations
        return dataclasses.replace(new, basis=basis @ q1 @ q2)

    def loss_parts(self, state: ALSState):
        """The objective's parts (rotation-invariant, so computed in the stored basis)."""
        obs = observed_loss(self.rows.indptr, self.rows.indices, self.rows.values, self._starts[0], state.w, state.h)
        t = self._threads
        with t.blas():
            gw, gh = t.gram(state.w), t.gram(state.h)
        norms = [np.einsum("ij,ij->i", x, x).astype(np.float64) for x in (state.w, state.h)]
        return obs, gw, gh, float(self._lam[0] @ norms[0] + self._lam[1] @ norms[1])

    def to_numpy(self, state: ALSState) -> tuple[np.ndarray, np.ndarray]:
        """float32 tables in the original basis."""
        if state.basis is None:
            return state.w, state.h
        back = state.basis.T.astype(np.float32)
        w = state.w @ back
        return w, (w if self.tied else state.h @ back)

    # Checkpoints hold the stored (rotated) tables and their basis, so a resumed CG run
    # continues bit for bit with the same compiled kernel (one loaded from Numba's cache may round
    # differently: float32 rounding; a resumed 'block' run recomputes the scores the hand-off would
    # have carried: the same); other engines rotate them back when they restore.
    keeps_basis = True

    def from_external(self, w, h, epoch: int, basis: np.ndarray | None = None) -> ALSState:
        w = as_table(w, self.n_rows, self._pool)
        h = w if self.tied else as_table(h, self.n_cols, self._pool)
        return ALSState(w=w, h=h, epoch=int(epoch), tied=self.tied, basis=basis)


def cpu_backend_reason(hp: HParams) -> str | None:
    """None when ``CpuEngine`` can train ``hp`` here, else why not (for 'auto' and error messages)."""
    import jax

    if hp.solver not in ("cg", "block"):
        return f"solver {hp.solver!r} (the CPU kernels are CG and iALS++ 'block')"
    if hp.dtype != "float32":
        return f"dtype {hp.dtype!r} (the CPU kernel stores float32)"
    if jax.process_count() > 1:
        return "a multi-process run (the sharded engine spans processes)"
    if jax.default_backend() != "cpu":
        return f"an accelerator ({jax.default_backend()}) is present"
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return "NUMBA_DISABLE_JIT=1"
    return None
