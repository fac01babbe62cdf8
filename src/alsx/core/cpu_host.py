"""Host memory and BLAS threads of the CPU backend: tables in huge-page memory kept in a pool,
row cuts of equal work for the kernels, and row-parallel single-threaded BLAS."""

from __future__ import annotations

import mmap
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from alsx.errors import DivergenceError

# Work per row ~ (nnz * passes + a few d-vectors): rows are cut into blocks of equal work.
ROW_COST = 4


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
                x[c : min(c + chunk, b)] = x[c : min(c + chunk, b)] @ q

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
        raise DivergenceError(
            f"the fixed [{len(table):,}, {table.shape[1]}] table of a half-step holds non-finite values"
        )
    e, q = np.linalg.eigh(g)
    return np.maximum(e, 0.0), q
