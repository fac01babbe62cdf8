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
# Entries of a row whose float32 terms are summed before the sum goes into the float64 vector
# (columns of that 20k-node part, relative error of a half-step: one float32 sum per row 7.9e-7,
# blocks of 32 6.3e-7, of 16 4.4e-7, of 8 3.1e-7; all in float64 1.6e-7 at ~10 % more time).
SUM_BLOCK = 16


@numba.njit(parallel=True, fastmath=True, cache=True)
def cg_rows(indptr, indices, conf, starts, w, h, shared, lam, steps, out):  # pragma: no cover - compiled
    """CG on every row in the eigenbasis of the shared term (see the module docstring).

    indptr/indices/conf: the CSR of this side; starts: [n_blocks + 1] row cuts;
    w: [n, d] warm starts; h: [m, d] fixed table; shared: [d] alpha0 * eigenvalues;
    lam: [n]; out: [n, d] (written; rows without entries get their optimum 0); it may be
    ``w`` itself: a row's warm start is read before that row is written.

    Precision: the passes over a row's entries (the O(|I_u| d) work) run in float32, each
    SUM_BLOCK entries summed in float32 and the partial sums added in float64; the CG vectors
    x, r, p, Ap and scalars (O(d) per step) are float64.  With float32 recurrences CG's 3
    steps amplified rounding by the condition number of weakly regularised rows: at the 'auto'
    defaults one column half-step on a 20k-node part of cnr-2000 (d=32) was 5.0e-4 off float64
    on columns of 101-1000 entries (now 4.5e-7), and cnr-2000's loss after epoch 1 at d=256
    1.2e-5 (now 5.6e-8; benchmarks/results_conformance_f64_d256.md).
    """
    d = w.shape[1]
    for blk in prange(len(starts) - 1):
        end = indptr[starts[blk + 1]]
        x = np.empty(d, np.float64)
        r = np.empty(d, np.float64)
        p = np.empty(d, np.float64)
        ap = np.empty(d, np.float64)
        diag = np.empty(d, np.float64)
        v = np.empty(d, np.float32)  # what the entry passes take scores with: x0, then p, in float32
        part = np.empty(d, np.float32)  # float32 sum over up to SUM_BLOCK entries
        for u in range(starts[blk], starts[blk + 1]):
            s0, s1 = indptr[u], indptr[u + 1]
            if s0 == s1:
                out[u, :] = 0.0
                continue
            for j in range(d):
                x[j] = w[u, j]
                v[j] = w[u, j]
                diag[j] = np.float64(shared[j]) + np.float64(lam[u])
                r[j] = -diag[j] * x[j]
                part[j] = 0.0
            for k0 in range(s0, s1, SUM_BLOCK):  # r = b - A x0 in one pass: sum c (1 - <h, x0>) h
                if k0 > s0:
                    for j in range(d):
                        r[j] += part[j]
                        part[j] = 0.0
                for k in range(k0, min(k0 + SUM_BLOCK, s1)):
                    if k + PREFETCH < end:
                        prefetch_row(h, indices[k + PREFETCH])
                    hk = h[indices[k]]
                    s = np.float32(0.0)
                    for j in range(d):
                        s += hk[j] * v[j]
                    q = conf[k] * (np.float32(1.0) - s)
                    for j in range(d):
                        part[j] += q * hk[j]
            rs = 0.0
            for j in range(d):
                r[j] += part[j]
                p[j] = r[j]
                rs += r[j] * r[j]
            far = (s1 - s0) * d > L1_FLOATS
            for _ in range(steps):
                if rs <= FLOOR:  # converged (see RESIDUAL_FLOOR): keep x
                    break
                for j in range(d):
                    ap[j] = diag[j] * p[j]
                    v[j] = p[j]
                    part[j] = 0.0
                for k0 in range(s0, s1, SUM_BLOCK):
                    if k0 > s0:
                        for j in range(d):
                            ap[j] += part[j]
                            part[j] = 0.0
                    for k in range(k0, min(k0 + SUM_BLOCK, s1)):
                        if far and k + PREFETCH < s1:
                            prefetch_row(h, indices[k + PREFETCH])
                        hk = h[indices[k]]
                        s = np.float32(0.0)
                        for j in range(d):
                            s += hk[j] * v[j]
                        q = conf[k] * s
                        for j in range(d):
                            part[j] += q * hk[j]
                pap = 0.0
                for j in range(d):
                    ap[j] += part[j]
                    pap += p[j] * ap[j]
                if pap <= 0.0:
                    break
                alpha = rs / pap
                rs_new = 0.0
                for j in range(d):
                    x[j] += alpha * p[j]
                    r[j] -= alpha * ap[j]
                    rs_new += r[j] * r[j]
                beta = rs_new / rs
                rs = rs_new
                for j in range(d):
                    p[j] = r[j] + beta * p[j]
            for j in range(d):
                out[u, j] = x[j]


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
