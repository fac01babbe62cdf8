"""The Numba kernels of the CPU backend: CG on every row of one side, and the observed loss.

Both run in the eigenbasis of the fixed table's Gramian (see ``alsx.core.cpu``): the shared
term alpha0 * G + lambda_u * I of every row's matrix is the diagonal ``shared + lam[u]`` there.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from alsx.core.simd import PREFETCH, prefetch_row
from alsx.core.solvers import RESIDUAL_FLOOR

# A row whose table rows overflow L1 (32 KiB) re-reads them from L2 or beyond in every CG
# pass, so its CG passes prefetch too: 7-19 % less kernel CPU time on the column half-step
# of a 10M x 2M matrix (48 % of its entries are in such rows at d=64), 8 % on the row one.
L1_FLOATS = 8192
FLOOR = np.float32(RESIDUAL_FLOOR)  # CG's stopping rule (see alsx.core.solvers), as the kernel's float32


@numba.njit(parallel=True, fastmath=True, cache=True)
def cg_rows(indptr, indices, conf, starts, w, h, shared, lam, steps, out):  # pragma: no cover - compiled
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
                if rs <= FLOOR:  # converged (see RESIDUAL_FLOOR): keep x
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
def observed_loss(indptr, indices, conf, starts, w, h):  # pragma: no cover - compiled
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
