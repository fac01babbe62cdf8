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
(``alsx.core.cpu_block``); everything else here is shared.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import time
import weakref

import numba
import numpy as np
from numba import prange

from alsx.config import HParams, Packing
from alsx.core.cpu_block import block_flops, block_rows, transpose_positions
from alsx.core.objective import Loss, row_regularisation
from alsx.core.simd import PREFETCH, prefetch_row
from alsx.core.solvers import RESIDUAL_FLOOR
from alsx.core.state import ALSState, init_state
from alsx.data.matrix import CSR
from alsx.errors import DivergenceError

# Work per row ~ (nnz * passes + a few d-vectors): rows are cut into blocks of equal work.
ROW_COST = 4
BLOCKS_PER_THREAD = 64
# A row whose table rows overflow L1 (32 KiB) re-reads them from L2 or beyond in every CG
# pass, so its CG passes prefetch too: 7-19 % less kernel CPU time on the column half-step
# of a 10M x 2M matrix (48 % of its entries are in such rows at d=64), 8 % on the row one.
L1_FLOATS = 8192
# The block solver hands each half-step's final residuals on to the next (see
# CpuEngine._handoffs) and recomputes them from the tables every this many epochs.
RESCORE_EVERY = 8
_FLOOR = np.float32(RESIDUAL_FLOOR)  # CG's stopping rule (see alsx.core.solvers), as the kernel's float32


# ============================================================================ kernels
@numba.njit(parallel=True, fastmath=True, cache=True)
def _cg_rows(indptr, indices, conf, starts, w, h, shared, lam, steps, out):  # pragma: no cover - compiled
    """CG on every row in the eigenbasis of the shared term (see the module docstring).

    indptr/indices/conf: the CSR of this side; starts: [n_blocks + 1] row cuts;
    w: [n, d] warm starts; h: [m, d] fixed table; shared: [d] alpha0 * eigenvalues;
    lam: [n]; out: [n, d] (written; rows without entries get their optimum 0); it may be
    ``w`` itself: a row's warm start is read before that row is written.
    """
    d = w.shape[1]
    for blk in prange(len(starts) - 1):
        end = indptr[starts[blk + 1]]
        x = np.empty(d, np.float32)
        r = np.empty(d, np.float32)
        p = np.empty(d, np.float32)
        ap = np.empty(d, np.float32)
        diag = np.empty(d, np.float32)
        for u in range(starts[blk], starts[blk + 1]):
            s0, s1 = indptr[u], indptr[u + 1]
            if s0 == s1:
                out[u, :] = 0.0
                continue
            for j in range(d):
                x[j] = w[u, j]
                diag[j] = shared[j] + lam[u]
                r[j] = -diag[j] * x[j]
            for k in range(s0, s1):  # r = b - A x0 in one pass: sum c (1 - <h, x0>) h
                if k + PREFETCH < end:
                    prefetch_row(h, indices[k + PREFETCH])
                hk = h[indices[k]]
                s = np.float32(0.0)
                for j in range(d):
                    s += hk[j] * x[j]
                q = conf[k] * (np.float32(1.0) - s)
                for j in range(d):
                    r[j] += q * hk[j]
            rs = np.float32(0.0)
            for j in range(d):
                p[j] = r[j]
                rs += r[j] * r[j]
            far = (s1 - s0) * d > L1_FLOATS
            for _ in range(steps):
                if rs <= _FLOOR:  # converged (see RESIDUAL_FLOOR): keep x
                    break
                for j in range(d):
                    ap[j] = diag[j] * p[j]
                for k in range(s0, s1):
                    if far and k + PREFETCH < s1:
                        prefetch_row(h, indices[k + PREFETCH])
                    hk = h[indices[k]]
                    s = np.float32(0.0)
                    for j in range(d):
                        s += hk[j] * p[j]
                    q = conf[k] * s
                    for j in range(d):
                        ap[j] += q * hk[j]
                pap = np.float32(0.0)
                for j in range(d):
                    pap += p[j] * ap[j]
                if pap <= 0.0:
                    break
                alpha = rs / pap
                rs_new = np.float32(0.0)
                for j in range(d):
                    x[j] += alpha * p[j]
                    r[j] -= alpha * ap[j]
                    rs_new += r[j] * r[j]
                beta = rs_new / rs
                rs = rs_new
                for j in range(d):
                    p[j] = r[j] + beta * p[j]
            out[u, :] = x


@numba.njit(parallel=True, fastmath=True, cache=True)
def _observed_loss(indptr, indices, conf, starts, w, h):  # pragma: no cover - compiled
    """sum over stored entries of c (<w_u, h_i> - 1)^2: float32 scores (as the JAX engines), float64 sum."""
    d = w.shape[1]
    total = 0.0
    for blk in prange(len(starts) - 1):
        part = 0.0
        for u in range(starts[blk], starts[blk + 1]):
            for k in range(indptr[u], indptr[u + 1]):
                hk = h[indices[k]]
                s = np.float32(0.0)
                for j in range(d):
                    s += hk[j] * w[u, j]
                part += conf[k] * (np.float64(s) - 1.0) ** 2
        total += part
    return total


# ============================================================================ pure functions
def _huge_mapping(nbytes: int) -> mmap.mmap | None:
    """Anonymous memory advised for transparent huge pages; None where unavailable or under 4 MiB."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(mmap, "MAP_PRIVATE") or nbytes < (4 << 20):
        return None
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without THP: plain pages
        pass
    return buf


def empty_table(n: int, d: int) -> np.ndarray:
    """Uninitialised float32 [n, d] in anonymous memory advised for transparent huge pages.

    The kernel reads the fixed table at random rows; with 4 KiB pages nearly every read
    of a large table also misses the TLB (measured: 10-17 % of a d=256 half-step on a
    1M x 200k matrix).  Falls back to ``np.empty`` where the advice is unavailable.
    """
    buf = _huge_mapping(n * d * 4)
    return np.empty((n, d), np.float32) if buf is None else np.frombuffer(buf, np.float32, count=n * d).reshape(n, d)


class TablePool:
    """:func:`empty_table` arrays whose memory is handed out again once no array uses it.

    Each epoch returns fresh tables (earlier states stay valid), and the previous state's
    are freed a half-step before the next ones are needed.  Freed memory goes back to
    the OS, and on a VM with free-page reporting to the host, within seconds; faulting
    it in again ran at 0.3-0.6 GB/s here, against 5 GB/s for memory just freed and
    12 GB/s for a rewrite (3 GB of new tables per epoch at 100M nonzeros: about 5 s).
    So the pool keeps the mappings.  A mapping is reused only when the weak reference to
    its root array is dead: every NumPy view of a handed-out table keeps that root alive.
    """

    def __init__(self):
        self._maps: dict[tuple[int, int], list[list]] = {}  # shape -> [[mapping, weakref to root]]

    def take(self, n: int, d: int) -> np.ndarray:
        entries = self._maps.setdefault((n, d), [])
        free = [e for e in entries if e[1]() is None]
        if free:
            entry = free[0]
            # one spare mapping per shape serves the epoch loop; the other free ones are released
            entries[:] = [e for e in entries if e is entry or e[1]() is not None]
        else:
            buf = _huge_mapping(n * d * 4)
            if buf is None:
                return np.empty((n, d), np.float32)
            entry = [buf, None]
            entries.append(entry)
        root = np.frombuffer(entry[0], np.float32, count=n * d)
        entry[1] = weakref.ref(root)
        return root.reshape(n, d)


def as_table(x, n: int | None = None, pool: TablePool | None = None) -> np.ndarray:
    """The first ``n`` rows (default all) of array-like ``x`` copied into an :func:`empty_table`
    (taken from ``pool`` when given)."""
    x = np.asarray(x[:n] if n is not None else x, np.float32)
    out = empty_table(*x.shape) if pool is None else pool.take(*x.shape)
    out[:] = x
    return out


def work_blocks(indptr: np.ndarray, n_blocks: int) -> np.ndarray:
    """int64 [k + 1] row cuts into at most ``n_blocks`` blocks of about equal work.

    Numba hands each thread an equal count of consecutive blocks, so equal-work blocks
    keep threads balanced on skewed (web) graphs.
    """
    n = len(indptr) - 1
    cost = indptr + ROW_COST * np.arange(n + 1, dtype=np.int64)  # cumulative work at each row cut
    targets = np.linspace(0, cost[-1], n_blocks + 1)
    cuts = np.searchsorted(cost, targets, side="left")
    cuts[0], cuts[-1] = 0, n
    return np.unique(cuts).astype(np.int64)


class RowThreads:
    """Row-parallel BLAS on ``n`` Python threads, each calling single-threaded BLAS.

    Multi-threaded OpenBLAS leaves its workers spinning after each product, and the
    Numba kernel that follows runs 40-50 % slower on a small machine while they do;
    splitting the rows over our own threads and limiting BLAS to one thread (inside
    :meth:`blas`) is also as fast for these tall-skinny products.
    """

    def __init__(self, n: int):
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import ThreadpoolController

        self.n = max(1, n)
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="alsx-blas") if self.n > 1 else None
        self._controller = ThreadpoolController()  # scans the loaded BLAS libraries once

    def blas(self):
        """Context in which BLAS runs one thread per call."""
        return self._controller.limit(limits=1, user_api="blas")

    def _map(self, fn, n_rows: int) -> list:
        cuts = np.linspace(0, n_rows, self.n + 1).astype(np.int64)
        spans = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
        if self._pool is None:
            return [fn(*sp) for sp in spans]
        return list(self._pool.map(lambda sp: fn(*sp), spans))

    def matmul(self, x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x [n, k] @ y [k, d] into ``out``."""
        out = np.empty((x.shape[0], y.shape[1]), np.float32) if out is None else out
        self._map(lambda a, b: np.matmul(x[a:b], y, out=out[a:b]), len(x))
        return out

    def rotate_in_place(self, x: np.ndarray, q: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """x [n, d] <- x @ q [d, d], ``chunk`` rows at a time (no second [n, d] table)."""

        def span(a: int, b: int) -> None:
            for c in range(a, b, chunk):
                x[c:min(c + chunk, b)] = x[c:min(c + chunk, b)] @ q

        self._map(span, len(x))
        return x

    def gram(self, x: np.ndarray) -> np.ndarray:
        """x^T x, float32 products summed in float64."""
        return sum(self._map(lambda a, b: (x[a:b].T @ x[a:b]).astype(np.float64), len(x)))


def eigenbasis(table: np.ndarray, threads: RowThreads) -> tuple[np.ndarray, np.ndarray]:
    """(e [d] float64 >= 0, Q [d, d] float64) with table^T table = Q diag(e) Q^T.

    A non-finite entry anywhere in ``table`` makes the Gramian non-finite: that is checked here
    (for free) so a divergence is reported as one, not as eigh's "did not converge".
    """
    g = threads.gram(table)
    if not np.isfinite(g).all():
        raise DivergenceError(f"the fixed [{len(table):,}, {table.shape[1]}] table of a half-step holds "
                              "non-finite values")
    e, q = np.linalg.eigh(g)
    return np.maximum(e, 0.0), q


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
        _cg_rows(side.indptr, side.indices, side.values, starts, w_rot, h_rot, shared, lam, cg_steps, out)
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
    return dataclasses.replace(c, indptr=np.ascontiguousarray(c.indptr, np.int64),
                               indices=np.ascontiguousarray(c.indices, np.int32),
                               values=np.ascontiguousarray(c.values, np.float32))


class CpuEngine:
    """iALS with the CG or the iALS++ ('block') solver on the host CPU, one process, all cores.

    With ``solver='cg'``: same interface and, up to float32 rounding, same results as
    ``LocalEngine``.  With ``solver='block'``: ``block_sweeps`` sweeps of ``hp.block_size``
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

    def __init__(self, rows: CSR, cols: CSR, hp: HParams, packing: Packing | None = None, tied: bool = False,
                 block_sweeps: int = 1):
        if hp.solver not in ("cg", "block") or hp.dtype != "float32":
            raise ValueError(f"the CPU backend runs solver='cg' or 'block' on float32 tables, got "
                             f"solver={hp.solver!r} dtype={hp.dtype!r}; use backend='jax' for the others")
        if block_sweeps < 1:
            raise ValueError(f"block_sweeps must be >= 1, got {block_sweeps}")
        if tied and rows.n_rows != rows.n_cols:
            raise ValueError(f"tied embeddings need a square matrix, got {rows.n_rows} x {rows.n_cols}")
        from alsx.core.engine import PackStats

        t = time.perf_counter()
        self.hp, self.tied = hp, tied
        self._solve = dict(block_size=hp.block_width("cpu"), sweeps=block_sweeps)
        self.n_rows, self.n_cols = rows.n_rows, rows.n_cols
        self.rows, self.cols = _as_csr32(rows), _as_csr32(cols)
        n_blocks = BLOCKS_PER_THREAD * numba_threads()
        self._starts = (work_blocks(self.rows.indptr, n_blocks), work_blocks(self.cols.indptr, n_blocks))
        self._lam = (self._lambdas(self.rows, self.n_cols), self._lambdas(self.cols, self.n_rows))
        self.timings: dict[str, float] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._pool = TablePool()
        self._threads = RowThreads(numba_threads())
        # block solver: the entry permutations between the two sides, and weak references to the
        # tables of the state whose residuals the last epoch left in _buffers['r_rows']
        self._perm: tuple | None = None
        self._residuals_of: tuple | None = None
        self.stats = PackStats(1.0, 1.0, time.perf_counter() - t)  # CSR as is: no padding

    def _lambdas(self, side: CSR, n_other: int) -> np.ndarray:
        hp = self.hp
        return np.asarray(row_regularisation(side.lengths(), n_other, hp.reg, hp.unobserved_weight, hp.nu))

    def set_hparams(self, hp: HParams) -> None:
        """Swaps reg, unobserved_weight, nu, cg_steps, init, init_scale; recomputes the per-row lambdas."""
        from alsx.core.engine import check_swappable

        self.hp = check_swappable(self.hp, hp)
        self._lam = (self._lambdas(self.rows, self.n_cols), self._lambdas(self.cols, self.n_rows))
        self._residuals_of = None  # the block solver's hand-off belongs to the old objective

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

    def release_scratch(self) -> None:
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
        fresh = (ref is not None and ref[0]() is state.w and ref[1]() is state.h
                 and state.epoch % RESCORE_EVERY != 0)
        return (dict(residuals_in=r_rows if fresh else None, residuals_out=r_cols, perm=self._perm[0]),
                dict(residuals_in=r_cols, residuals_out=r_rows, perm=self._perm[1]))

    def epoch(self, state: ALSState) -> ALSState:
        """Two half-steps (see :meth:`_epoch`); a non-finite table is reported with its epoch."""
        try:
            return self._epoch(state)
        except DivergenceError as e:
            raise DivergenceError(f"training diverged in epoch {state.epoch + 1}: {e} (the tables after epoch "
                                  f"{state.epoch} were finite)") from None

    def _epoch(self, state: ALSState) -> ALSState:
        """Two half-steps.  The returned state's tables come from a :class:`TablePool` (memory of
        no live array, so earlier states stay valid); the row table solved by the first
        half-step is rotated in place by the second, so an epoch holds two [n, d] row tables
        (the state's and the new one) and three [m, d] column tables."""
        hp = self.hp
        basis = np.eye(hp.dim) if state.basis is None else state.basis
        args = (hp.unobserved_weight, hp.cg_steps)
        n, m = self.n_rows, self.n_cols
        if self.tied:
            t, _, q1 = half_step(state.w, state.w, self.rows, self._lam[0], *args, self._starts[0], self._threads,
                                 tied=True, out=self._buffer("t_out", n), h_out=self._buffer("t_rot", n),
                                 timings=self.timings, **self._solve)
            h, _, q2 = half_step(t, t, self.cols, self._lam[1], *args, self._starts[1], self._threads, tied=True,
                                 out=self._pool.take(n, hp.dim), h_out=self._buffer("t_rot", n), timings=self.timings,
                                 **self._solve)
            w = h
        else:
            first, second = self._handoffs(state)
            w, h, q1 = half_step(state.w, state.h, self.rows, self._lam[0], *args, self._starts[0], self._threads,
                                 out=self._pool.take(n, hp.dim), h_out=self._buffer("h_rot", m),
                                 timings=self.timings, handoff=first, **self._solve)
            h, w, q2 = half_step(h, w, self.cols, self._lam[1], *args, self._starts[1], self._threads,
                                 out=self._pool.take(m, hp.dim), h_out=w, timings=self.timings, handoff=second,
                                 **self._solve)
            if first:
                self._residuals_of = (weakref.ref(w), weakref.ref(h))
        return ALSState(w=w, h=h, epoch=state.epoch + 1, tied=self.tied, basis=basis @ q1 @ q2)

    def loss(self, state: ALSState) -> Loss:
        """The objective's parts (rotation-invariant, so computed in the stored basis)."""
        a0 = self.hp.unobserved_weight
        obs = _observed_loss(self.rows.indptr, self.rows.indices, self.rows.values, self._starts[0],
                             state.w, state.h)
        t = self._threads
        with t.blas():
            unobs = a0 * float(np.sum(t.gram(state.w) * t.gram(state.h)))
        norms = [np.einsum("ij,ij->i", x, x).astype(np.float64) for x in (state.w, state.h)]
        reg = float(self._lam[0] @ norms[0] + self._lam[1] @ norms[1])
        return Loss(float(obs), unobs, reg)

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

    def to_external(self, state: ALSState):
        import jax

        from alsx.core.sharding import make_mesh, table_sharding

        sharding = table_sharding(make_mesh(jax.devices()[:1]))
        return jax.device_put(state.w, sharding), jax.device_put(state.h, sharding)

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


def best_seconds(fn, repeat: int = 3) -> float:
    """Least wall time of ``repeat`` calls of ``fn()`` after one warm-up call (compiles, faults pages in)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def profile_half_step(engine: CpuEngine, state: ALSState, side: str = "rows", repeat: int = 2) -> dict[str, float]:
    """Best-of-``repeat`` seconds per phase of one half-step of ``engine`` at ``state``.

    Phases: gramian (+ eigen-decomposition), rotate (both tables), residual (the kernel
    with 0 CG steps: gather, b - A x0, write) and cg_steps (the rest of the kernel).
    solve_gflops counts the kernel's multiply-adds over the stored entries (2 passes of
    2d FLOPs per entry, for the residual and each step) per second of kernel time.
    For the 'block' solver, residual is the kernel with 0 sweeps (the scores H_u x0, which
    training runs only every RESCORE_EVERY epochs: see ``CpuEngine._handoffs``) and cg_steps
    the kernel given those residuals (gather and sweeps); FLOPs as ``cpu_block.block_flops``
    less the score pass.
    """
    from alsx.core.profile import sgemm_rate

    hp = engine.hp
    i = 0 if side == "rows" else 1
    csr, lam, starts = (engine.rows, engine.cols)[i], engine._lam[i], engine._starts[i]
    w, h = (state.w, state.h) if i == 0 else (state.h, state.w)
    threads = engine._threads
    out = np.empty_like(w)

    def best(fn) -> float:
        return best_seconds(fn, repeat)

    with threads.blas():
        gramian = best(lambda: eigenbasis(h, threads))
        q32 = eigenbasis(h, threads)[1].astype(np.float32)
        rotate = best(lambda: (threads.matmul(h, q32), threads.matmul(w, q32)))
    shared = np.ones(hp.dim, np.float32) * hp.unobserved_weight

    bs, sweeps = engine._solve["block_size"], engine._solve["sweeps"]
    if bs:
        residual = best(lambda: block_rows(csr, starts, w, h, shared, lam, bs, 0, out))
        handed = np.full(csr.nnz, 0.5, np.float32)  # their values do not change the work
        steps = best(lambda: block_rows(csr, starts, w, h, shared, lam, bs, sweeps, out, residuals_in=handed))
        flops, seconds = block_flops(csr.nnz, len(lam), hp.dim, bs, sweeps) - 2.0 * csr.nnz * hp.dim, steps
    else:
        residual = best(lambda: _cg_rows(csr.indptr, csr.indices, csr.values, starts, w, h, shared, lam, 0, out))
        seconds = best(lambda: _cg_rows(csr.indptr, csr.indices, csr.values, starts, w, h, shared, lam, hp.cg_steps,
                                        out))
        steps = max(seconds - residual, 0.0)
        flops = csr.nnz * 2 * (2 * hp.dim) * (hp.cg_steps + 1)
    result = {"gramian": gramian, "rotate": rotate, "residual": residual, "cg_steps": steps}
    result["total"] = gramian + rotate + steps + (0.0 if bs else residual)  # a handed-on block half-step
    result["solve_gflops"] = flops / seconds / 1e9
    result["sgemm_gflops"] = sgemm_rate() / 1e9
    return result
