"""The CPU backend's iALS++ kernel: block-coordinate sweeps in the Gramian's eigenbasis.

iALS++ (Rendle et al. 2021) minimises each row's objective exactly over one block B of
``b`` coordinates at a time, the others fixed:

    (H_uB^T C_u H_uB + D_B) delta_B = H_uB^T C_u (1 - H_u x) - D_B x_B,

where D is the row's shared term.  ``alsx.core.cpu`` rotates both tables into the
eigenbasis of the fixed table's Gramian before each half-step, so D = alpha0 * e +
lambda_u is diagonal there: blocks are coupled only through the row's observed items, and
the shared term costs O(b) per block instead of the O(d b) product with G[:, B] of the
original basis.  (A sweep in the eigenbasis is therefore a different iteration from the
JAX engine's sweep in the original basis; both converge to the same exact solve.)

Layout.  Every step of a sweep is a sum or an update over the row's n items for one
coordinate, so the row's items are wanted item-minor: a = sqrt(c) * H_u[:, chunk]^T,
[K, n].  Each chunk of K coordinates (K x n floats kept near BUFFER_FLOATS, so in L2, but
K >= MIN_CHUNK) is gathered with 8 x 8 register transposes (``alsx.core.simd.gather_t8``:
8-float loads, shuffles, 8-float stores); the loops over items then run over contiguous,
zero-padded rows and vectorise.  The residuals r = sqrt(c) * (1 - H_u x) are kept for the
whole row; a row's final residuals are the next half-step's starting scores, so they are
handed on in the other side's entry order (``CpuEngine._handoffs``) and the score pass
runs only on the first and every RESCORE_EVERY-th epoch.  Blocks of 1 and 2 coordinates
take fused passes (b = 1: one pass per coordinate applies its step and forms the next
coordinate's sums; b = 2: one pass forms the block's gradient and Gram, one updates r);
larger blocks form their Gram's lower triangle pass by pass.

Per entry, one sweep costs d (b + 5) FLOPs (``block_flops``; 2 d more for a score pass)
against 16 d for three CG steps, plus the transposing gather (about a CG step's time).
Measured (ml1m, d=1024, benchmarks/RESULTS.md): one sweep with b = 1 given handed-on
residuals takes 0.70-0.72x the CG-3 kernel's time (b = 2: 0.73-0.80x; b >= 4 is slower
than CG), and 8 epochs at 0.91x CG 3's seconds per epoch reach its Recall@20 and
Cholesky's (80x faster).  The per-coordinate steps are serial (a reduction, a division, an
update), so rows of a few items pay about 50 cycles per coordinate whatever n: on cnr-2000
(9 items per row) at d=256 a sweep costs 2.5-3.2x the CG-3 kernel, and CG stays the default.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from alsx.core.simd import PREFETCH, gather_t8, prefetch, prefetch_row

# Floats of one chunk of transposed item rows (K coordinates x n items): 128 KiB stays in
# L2 next to the residuals.  (16K-64K measured alike on ml1m at d=1024.)
BUFFER_FLOATS = 32768
# ... but a chunk spans at least this many coordinates (4 cache lines of each item row): a long
# row's narrow chunks read one line per item, scattered, and wait on each (item side of
# ml1m at d=1024: the kernel at 0.90 of CG 3's time with chunks of 8, 0.67-0.73 with 64-128).
MIN_CHUNK = 64
_TINY = 1e-30  # pivots are clamped here: a zero column with lambda = alpha0 = 0 stays at 0


@numba.njit(fastmath=True)
def _gather_chunk(h, indices, s0, n, k0, kw, sc, unit, buf):  # pragma: no cover - compiled
    """buf[j, t] = sc[t] * h[indices[s0 + t], k0 + j] for t < n, j < kw (sc ignored if ``unit``)."""
    n8, w8 = n - n % 8, kw - kw % 8
    for t in range(0, n8, 8):
        if t + 8 < n8:  # the next 8 items' lines, while these are transposed
            for r in range(8):
                for j in range(0, kw, 16):
                    prefetch(h, indices[s0 + t + 8 + r], k0 + j)
        for j in range(0, w8, 8):
            if unit:
                gather_t8(h, indices, s0 + t, k0 + j, None, t, buf, j)
            else:
                gather_t8(h, indices, s0 + t, k0 + j, sc, t, buf, j)
    for t in range(n):  # what the 8 x 8 tiles left: the last n % 8 items, the last kw % 8 columns
        hk = h[indices[s0 + t]]
        q = sc[t]
        for j in range(w8 if t < n8 else 0, kw):
            buf[j, t] = q * hk[k0 + j]


@numba.njit(fastmath=True)
def _sweep_1(buf, r, x, shared, lu, k0, kw, npad):  # pragma: no cover - compiled
    """Coordinate descent over x[k0:k0 + kw] (blocks of one).

    One pass per coordinate: it applies coordinate j's step to the residuals and forms
    coordinate j + 1's gradient and curvature from them (15-25 % faster than two passes).
    """
    num = np.float32(0.0)
    den = np.float32(0.0)
    a = buf[0]
    for t in range(npad):
        num += a[t] * r[t]
        den += a[t] * a[t]
    for j in range(kw):
        dk = shared[k0 + j] + lu
        delta = np.float32((num - dk * x[k0 + j]) / max(den + dk, _TINY))
        x[k0 + j] += delta
        a = buf[j]
        if j + 1 < kw:
            b = buf[j + 1]
            num = np.float32(0.0)
            den = np.float32(0.0)
            for t in range(npad):
                v = r[t] - delta * a[t]
                r[t] = v
                num += b[t] * v
                den += b[t] * b[t]
        else:
            for t in range(npad):
                r[t] -= delta * a[t]


@numba.njit(fastmath=True)
def _sweep_2(buf, r, x, shared, lu, k0, kw, npad):  # pragma: no cover - compiled
    """Exact 2 x 2 block updates over x[k0:k0 + kw] (Cholesky in float64)."""
    for j in range(0, kw, 2):
        a0, a1 = buf[j], buf[j + 1]
        g0 = np.float32(0.0)
        g1 = np.float32(0.0)
        c00 = np.float32(0.0)
        c01 = np.float32(0.0)
        c11 = np.float32(0.0)
        for t in range(npad):
            p, q, rt = a0[t], a1[t], r[t]
            g0 += p * rt
            g1 += q * rt
            c00 += p * p
            c01 += p * q
            c11 += q * q
        d0, d1 = shared[k0 + j] + lu, shared[k0 + j + 1] + lu
        b0 = np.float64(g0) - d0 * x[k0 + j]
        b1 = np.float64(g1) - d1 * x[k0 + j + 1]
        l00 = np.sqrt(max(np.float64(c00) + d0, _TINY))
        l10 = c01 / l00
        l11 = np.sqrt(max(np.float64(c11) + d1 - l10 * l10, _TINY))
        y0 = b0 / l00
        y1 = (b1 - l10 * y0) / l11
        e1 = np.float32(y1 / l11)
        e0 = np.float32((y0 - l10 * y1 / l11) / l00)
        x[k0 + j] += e0
        x[k0 + j + 1] += e1
        for t in range(npad):
            r[t] -= e0 * a0[t] + e1 * a1[t]


@numba.njit(fastmath=True)
def _sweep_b(buf, r, x, shared, lu, k0, kw, npad, block, a, g):  # pragma: no cover - compiled
    """Exact updates of blocks of ``block`` coordinates over x[k0:k0 + kw]; a [b, b], g [b] float64 scratch."""
    for j0 in range(0, kw, block):
        for j in range(block):
            aj = buf[j0 + j]
            acc = np.float32(0.0)
            for t in range(npad):
                acc += aj[t] * r[t]
            dj = shared[k0 + j0 + j] + lu
            g[j] = acc - dj * x[k0 + j0 + j]
            for k in range(j + 1):  # the Gram's lower triangle
                ak = buf[j0 + k]
                acc = np.float32(0.0)
                for t in range(npad):
                    acc += aj[t] * ak[t]
                a[j, k] = acc
            a[j, j] += dj
        for j in range(block):  # Cholesky a = L L^T in place (lower triangle)
            v = a[j, j]
            for k in range(j):
                v -= a[j, k] * a[j, k]
            v = np.sqrt(max(v, _TINY))
            a[j, j] = v
            for i in range(j + 1, block):
                t2 = a[i, j]
                for k in range(j):
                    t2 -= a[i, k] * a[j, k]
                a[i, j] = t2 / v
        for j in range(block):  # L y = g, then L^T delta = y, into g
            v = g[j]
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
            x[k0 + j0 + j] += dj
            aj = buf[j0 + j]
            for t in range(npad):
                r[t] -= dj * aj[t]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _block_rows(
    indptr, indices, conf, starts, w, h, shared, lam, block, step, budget, min_chunk, sweeps, r_in, r_out, perm, out
):  # pragma: no cover - compiled
    """``sweeps`` block-coordinate sweeps over blocks of ``block`` coordinates on every row.

    Arguments as ``alsx.core.cpu._cg_rows`` (w: warm starts, h: fixed table, both in the
    eigenbasis; shared: [d] alpha0 * eigenvalues; lam: [n]); ``block`` divides d; chunks
    of coordinates are multiples of ``step`` (a multiple of 8 and of ``block``) holding
    about ``budget`` floats, and at least ``min_chunk`` coordinates (rounded down to
    ``step``).  Rows without entries get their optimum 0.  ``out`` may be ``w`` (a row's
    warm start is read before the row is written).

    r_in: [nnz] float32 residuals sqrt(c) (1 - <h, w_u>) of the warm start in this side's
    entry order, or empty: then a score pass computes them.  r_out: [nnz] or empty: the
    final residuals, written to r_out[perm[k]] for entry k (the other side's order).
    """
    d = w.shape[1]
    handed, hand_on = r_in.shape[0] > 0, r_out.shape[0] > 0
    unit = True  # all confidences 1: the gather need not scale
    for k in range(len(conf)):
        if conf[k] != 1.0:
            unit = False
            break
    for blk in prange(len(starts) - 1):
        end = indptr[starts[blk + 1]]
        longest = 8
        for u in range(starts[blk], starts[blk + 1]):
            longest = max(longest, indptr[u + 1] - indptr[u])
        longest += (-longest) % 8
        widest = max(step, min_chunk // step * step)  # the narrowest chunk a row gets
        flat = np.empty(max(budget, widest * longest), np.float32)
        r = np.zeros(longest, np.float32)  # residuals sqrt(c) (1 - <h, x>), zero past n
        sc = np.empty(longest, np.float32)  # sqrt(c)
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
                sc[t] = np.float32(np.sqrt(conf[s0 + t]))
            if handed:
                for t in range(n):
                    r[t] = r_in[s0 + t]
            else:
                for t in range(n):  # scores of the warm start
                    if s0 + t + PREFETCH < end:
                        prefetch_row(h, indices[s0 + t + PREFETCH])
                    hk = h[indices[s0 + t]]
                    acc = np.float32(0.0)
                    for j in range(d):
                        acc += hk[j] * x[j]
                    r[t] = sc[t] * (np.float32(1.0) - acc)
            npad = n + (-n) % 8
            for t in range(n, npad):
                r[t] = 0.0
            chunk = min(d, max(widest, budget // npad // step * step))
            buf = flat[: chunk * npad].reshape((chunk, npad))
            for j in range(chunk):  # padding columns: zero, so they add nothing to any sum
                for t in range(n, npad):
                    buf[j, t] = 0.0
            lu = lam[u]
            for _ in range(sweeps):
                for k0 in range(0, d, chunk):
                    kw = min(chunk, d - k0)
                    _gather_chunk(h, indices, s0, n, k0, kw, sc, unit, buf)
                    if block == 1:
                        _sweep_1(buf, r, x, shared, lu, k0, kw, npad)
                    elif block == 2:
                        _sweep_2(buf, r, x, shared, lu, k0, kw, npad)
                    else:
                        _sweep_b(buf, r, x, shared, lu, k0, kw, npad, block, a, g)
            out[u, :] = x
            if hand_on:
                for t in range(n):
                    r_out[perm[s0 + t]] = r[t]


_NONE_F = np.empty(0, np.float32)
_NONE_I = np.empty(0, np.int64)


def block_rows(
    side,
    starts: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    shared: np.ndarray,
    lam: np.ndarray,
    block: int,
    sweeps: int,
    out: np.ndarray,
    budget: int = BUFFER_FLOATS,
    min_chunk: int = MIN_CHUNK,
    residuals_in: np.ndarray | None = None,
    residuals_out: np.ndarray | None = None,
    perm: np.ndarray | None = None,
) -> np.ndarray:
    """Runs :func:`_block_rows` over the CSR ``side`` (int64/int32/float32 arrays); returns ``out``.

    budget, min_chunk: floats per chunk of transposed item rows, fewest coordinates per chunk
    (tests make both small to force many chunks).
    residuals_in: [nnz] residuals of (w, h) in this side's entry order, handed on by the
    previous half-step (skips the score pass); residuals_out with perm [nnz] (this side's
    entry -> the other side's): where to hand this half-step's final residuals on.
    """
    d = w.shape[1]
    if block < 1 or d % block:
        raise ValueError(f"block must divide d, got {block} and {d}")
    if not (h.flags.c_contiguous and h.dtype == np.float32):
        raise ValueError("the fixed table must be C-contiguous float32 (the gather reads 8 floats at once)")
    nnz = len(side.indices)
    for name, a in (("residuals_in", residuals_in), ("residuals_out", residuals_out), ("perm", perm)):
        if a is not None and a.shape != (nnz,):
            raise ValueError(f"{name} must have one value per stored entry ({nnz}), got shape {a.shape}")
    if (residuals_out is None) != (perm is None):
        raise ValueError("residuals_out and perm go together")
    step = int(np.lcm(8, block))
    _block_rows(
        side.indptr,
        side.indices,
        side.values,
        starts,
        w,
        h,
        shared,
        lam,
        int(block),
        step,
        int(budget),
        int(min_chunk),
        int(sweeps),
        _NONE_F if residuals_in is None else residuals_in,
        _NONE_F if residuals_out is None else residuals_out,
        _NONE_I if perm is None else perm,
        out,
    )
    return out


@numba.njit(cache=True)
def _transpose_positions(indptr, indices, col_indptr):  # pragma: no cover - compiled
    """[nnz] position in the transpose (CSR of columns, rows ascending in each) of each entry."""
    fill = col_indptr[:-1].copy()
    pos = np.empty(len(indices), np.int64)
    for u in range(len(indptr) - 1):
        for k in range(indptr[u], indptr[u + 1]):
            c = indices[k]
            pos[k] = fill[c]
            fill[c] += 1
    return pos


def transpose_positions(rows, cols) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows entry -> cols position, cols entry -> rows position) for a CSR and its transpose,
    or None when ``cols`` does not list each column's rows in ascending order (then no
    residuals are handed on and every half-step runs its score pass)."""
    r2c = _transpose_positions(rows.indptr, rows.indices, cols.indptr)
    row_of = np.repeat(np.arange(rows.n_rows, dtype=np.int64), np.diff(rows.indptr))
    if len(r2c) and not np.array_equal(cols.indices[r2c], row_of):
        return None
    c2r = np.empty_like(r2c)
    c2r[r2c] = np.arange(len(r2c), dtype=np.int64)
    small = len(r2c) < 2**31
    return (r2c.astype(np.int32), c2r.astype(np.int32)) if small else (r2c, c2r)


def block_flops(nnz: int, n_rows: int, d: int, block: int, sweeps: int) -> float:
    """Floating-point operations (multiply-add = 2) of :func:`_block_rows` on a side.

    Per stored entry: scores 2 d, then per sweep and block of b the Gram's lower triangle
    b (b + 1), gradient 2 b, residual update 2 b; per row and block b^3 / 3 + 2 b^2 for
    the Cholesky factor and the two triangular solves.
    """
    n_blocks = d // block
    per_entry = 2 * d + sweeps * n_blocks * (block * (block + 1) + 4 * block)
    per_row = sweeps * n_blocks * (block**3 / 3 + 2 * block**2)
    return float(nnz) * per_entry + float(n_rows) * per_row
