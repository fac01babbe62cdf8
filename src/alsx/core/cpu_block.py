"""The CPU backend's iALS++ kernel: block-coordinate sweeps in the Gramian's eigenbasis.

iALS++ (Rendle et al. 2021) minimises each row's objective exactly over one block B of
``b`` coordinates at a time, the others fixed:

    (H_uB^T C_u H_uB + D_B) delta_B = -g_B,   g = H_u^T C_u (H_u x - 1) + D x,

where D is the row's shared term.  ``alsx.core.cpu`` rotates both tables into the
eigenbasis of the fixed table's Gramian before each half-step, so D = alpha0 * e +
lambda_u is diagonal there: blocks are coupled only through the row's observed items, and
the shared term costs O(b) per block instead of the O(d b) product with G[:, B] of the
original basis.  (A sweep in the eigenbasis is therefore a different iteration from the
JAX engine's sweep in the original basis; both converge to the same exact solve.)

Per row with n = |I_u| observed items, one sweep costs about n d (b + 8) FLOPs
(scores H_u x: 2 n d; per block: the b x b Gram n b (b + 1), the gradient and the score
update 2 n b each, weighting n b) plus d b^2 / 3 for the Cholesky factors; the CG kernel
does 16 n d for 3 steps.  Each block's columns of the gathered rows are copied into a
[b, n] buffer (L1/L2-resident) so every inner loop runs over n contiguous floats.

Measured (ml1m, d=1024, 8 epochs, one sweep per half-step, benchmarks/RESULTS.md): Recall@20
within 0.4 % of CG 3 and of Cholesky for b = 8..64, but 2.2-2.8x slower per epoch than the
CG kernel.  Only b <= 8 matches CG 3's FLOPs, and this kernel runs at 6-9 GFLOP/s against
CG's 10-14: the per-block copy of b floats from each item row costs about 2 d loads and
stores per entry, more than all of CG's d-long vectorised passes.  It beats the JAX block
solver (2.5x at b=64) and Cholesky; warm-started CG stays the default.  The kernels alone
(``benchmarks/solvers.py --task kernels``): one sweep costs 3.5-9x the CG 3 kernel for b = 1..32,
least at b = 8; gathering each row's items once, transposed, instead of per block was tried and
not kept (the transposing gather alone cost more than CG 3).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange


@numba.njit(parallel=True, fastmath=True, cache=True)
def _block_rows(indptr, indices, conf, starts, w, h, shared, lam, block, sweeps, out):  # pragma: no cover - compiled
    """``sweeps`` block-coordinate sweeps over blocks of ``block`` coordinates on every row.

    Arguments as ``alsx.core.cpu._cg_rows`` (w: warm starts, h: fixed table, both in the
    eigenbasis; shared: [d] alpha0 * eigenvalues; lam: [n]); ``block`` divides d.
    Rows without entries get their optimum 0.  ``out`` may be ``w`` (in-place update).
    """
    d = w.shape[1]
    n_blocks = d // block
    for blk in prange(len(starts) - 1):
        longest = 0
        for u in range(starts[blk], starts[blk + 1]):
            longest = max(longest, indptr[u + 1] - indptr[u])
        ht = np.empty((block, max(longest, 1)), np.float32)  # block columns of the row's items, transposed
        s = np.empty(max(longest, 1), np.float32)  # scores <h_i, x>
        cw = np.empty(max(longest, 1), np.float32)
        x = np.empty(d, np.float32)
        a = np.empty((block, block), np.float64)
        g = np.empty(block, np.float64)
        for u in range(starts[blk], starts[blk + 1]):
            s0, s1 = indptr[u], indptr[u + 1]
            n = s1 - s0
            if n == 0:
                out[u, :] = 0.0
                continue
            for j in range(d):
                x[j] = w[u, j]
            for t in range(n):
                hk = h[indices[s0 + t]]
                acc = np.float32(0.0)
                for j in range(d):
                    acc += hk[j] * x[j]
                s[t] = acc
            for _ in range(sweeps):
                for bi in range(n_blocks):
                    k0 = bi * block
                    for t in range(n):
                        hk = h[indices[s0 + t]]
                        for j in range(block):
                            ht[j, t] = hk[k0 + j]
                    for t in range(n):  # c (s - 1): the observed part of the gradient's weights
                        cw[t] = conf[s0 + t] * (s[t] - np.float32(1.0))
                    for j in range(block):
                        diag = shared[k0 + j] + lam[u]
                        acc = np.float32(0.0)
                        for t in range(n):
                            acc += cw[t] * ht[j, t]
                        g[j] = acc + diag * x[k0 + j]
                    for j in range(block):
                        for t in range(n):
                            cw[t] = conf[s0 + t] * ht[j, t]
                        for k in range(j + 1):
                            acc = np.float32(0.0)
                            for t in range(n):
                                acc += cw[t] * ht[k, t]
                            a[j, k] = acc
                        a[j, j] += shared[k0 + j] + lam[u]
                    # Cholesky a = L L^T in place (lower triangle), then L L^T delta = -g into g.
                    for j in range(block):
                        v = a[j, j]
                        for k in range(j):
                            v -= a[j, k] * a[j, k]
                        v = np.sqrt(max(v, 1e-300))
                        a[j, j] = v
                        for i in range(j + 1, block):
                            t2 = a[i, j]
                            for k in range(j):
                                t2 -= a[i, k] * a[j, k]
                            a[i, j] = t2 / v
                    for j in range(block):
                        v = -g[j]
                        for k in range(j):
                            v -= a[j, k] * g[k]
                        g[j] = v / a[j, j]
                    for j in range(block - 1, -1, -1):
                        v = g[j]
                        for k in range(j + 1, block):
                            v -= a[k, j] * g[k]
                        g[j] = v / a[j, j]
                    for j in range(block):
                        dj = np.float32(g[j])
                        x[k0 + j] += dj
                        for t in range(n):
                            s[t] += dj * ht[j, t]
            out[u, :] = x


def block_rows(side, starts: np.ndarray, w: np.ndarray, h: np.ndarray, shared: np.ndarray, lam: np.ndarray,
               block: int, sweeps: int, out: np.ndarray) -> np.ndarray:
    """Runs :func:`_block_rows` over the CSR ``side`` (int64/int32/float32 arrays); returns ``out``."""
    d = w.shape[1]
    if block < 1 or d % block:
        raise ValueError(f"block must divide d, got {block} and {d}")
    _block_rows(side.indptr, side.indices, side.values, starts, w, h, shared, lam, int(block), int(sweeps), out)
    return out


def block_flops(nnz: int, n_rows: int, d: int, block: int, sweeps: int) -> float:
    """Floating-point operations (multiply-add = 2) of :func:`_block_rows` on a side.

    Per stored entry: scores 2 d, then per sweep and block the Gram's lower triangle
    b (b + 1), gradient 2 b, score update 2 b, weights b; per row and block b^3 / 3 + 2 b^2
    for the Cholesky factor and the two triangular solves.
    """
    n_blocks = d // block
    per_entry = 2 * d + sweeps * n_blocks * (block * (block + 1) + 5 * block)
    per_row = sweeps * n_blocks * (block ** 3 / 3 + 2 * block ** 2)
    return float(nnz) * per_entry + float(n_rows) * per_row
