"""A float64 NumPy oracle of the iALS objective and row update: exact solves on tiny dense
matrices, and whole trajectories of the engines' iterations (CG, iALS++ blocks of one) on CSRs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def row_lambdas(conf: np.ndarray, reg: float, alpha0: float, nu: float) -> np.ndarray:
    """[n] reg * (|I_u| + alpha0 * n_cols) ** nu for a dense confidence matrix [n, m] (0 = unobserved)."""
    return reg * ((conf > 0).sum(1) + alpha0 * conf.shape[1]) ** nu


def solve_rows(conf: np.ndarray, h: np.ndarray, reg: float, alpha0: float, nu: float) -> np.ndarray:
    """[n, d] exact row update: (sum_i c h h^T + alpha0 H^T H + lambda I) w = sum_i c h."""
    h = h.astype(np.float64)
    gram = h.T @ h
    lam = row_lambdas(conf, reg, alpha0, nu)
    out = np.zeros((conf.shape[0], h.shape[1]))
    for u in range(conf.shape[0]):
        c = conf[u]
        a = (h.T * c) @ h + alpha0 * gram + lam[u] * np.eye(h.shape[1])
        out[u] = np.linalg.solve(a, (h * c[:, None]).sum(0))
    return out


def loss_parts(conf: np.ndarray, w: np.ndarray, h: np.ndarray, reg: float, alpha0: float, nu: float) -> dict:
    """The objective's parts by brute force over all pairs (no Gramian trick)."""
    w = w.astype(np.float64)
    h = h.astype(np.float64)
    s = w @ h.T
    obs = float(np.sum(np.where(conf > 0, conf * (s - 1.0) ** 2, 0.0)))
    unobs = float(alpha0 * np.sum(s**2))
    reg_part = float(
        np.sum(row_lambdas(conf, reg, alpha0, nu) * (w**2).sum(1))
        + np.sum(row_lambdas(conf.T, reg, alpha0, nu) * (h**2).sum(1))
    )
    return {"observed": obs, "unobserved": unobs, "regularisation": reg_part}


def random_problem(seed: int, n: int = 40, m: int = 30, d: int = 6, density: float = 0.25, long_row: bool = True):
    """A random confidence matrix (some values != 1, one dense row) and small tables."""
    rng = np.random.default_rng(seed)
    conf = np.where(rng.random((n, m)) < density, 1.0 + rng.random((n, m)), 0.0)
    if long_row:
        conf[1, :] = 1.0 + rng.random(m)  # longer than a narrow block: exercises sub-row splitting
    conf[2, :] = 0.0  # an empty row
    w = rng.normal(size=(n, d)) * 0.3
    h = rng.normal(size=(m, d)) * 0.3
    return conf, w.astype(np.float32), h.astype(np.float32)


# ============================================================================ sparse float64 trajectories
# The engines' iterations, row by row the same steps, in float64 on CSR arrays (indptr, indices,
# values): what an engine's per-epoch losses and tables are compared with over many epochs.
FLOOR = 1e-30  # alsx.core.solvers.RESIDUAL_FLOOR: CG stops on a row once |r|^2 <= this


def csr_lambdas(indptr: np.ndarray, n_other: int, reg: float, alpha0: float, nu: float) -> np.ndarray:
    """[n] reg * (|I_u| + alpha0 * n_other) ** nu."""
    return reg * (np.diff(indptr).astype(np.float64) + alpha0 * n_other) ** nu


def _entry_rows(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


CHUNK = 1 << 16  # entries per row range of the sparse passes: [CHUNK, d] float64 gathers, not [nnz, d]


def _row_ranges(indptr: np.ndarray):
    """(a, b) row ranges of about CHUNK stored entries each (a longer row is a range of its own)."""
    n, a, chunk = len(indptr) - 1, 0, CHUNK
    while a < n:
        b = max(int(np.searchsorted(indptr, indptr[a] + chunk, side="right")) - 1, a + 1)
        yield a, min(b, n)
        a = min(b, n)


def observed_pass(indptr, indices, conf, x, h, target: float) -> np.ndarray:
    """float64 [n, d] sum over row u's stored entries k of c_k (target - <h_{indices[k]}, x_u>) h_{indices[k]}:
    with target 1 the observed part of b - A x, with target 0 minus the observed part of A x.
    Row range by row range (segment sums), so memory is [CHUNK, d], not [nnz, d]."""
    out = np.zeros(x.shape)
    for a, b in _row_ranges(indptr):
        s0, s1 = indptr[a], indptr[b]
        hg = h[indices[s0:s1]]
        s = np.einsum("kd,kd->k", hg, np.repeat(x[a:b], np.diff(indptr[a : b + 1]), axis=0))
        q = conf[s0:s1] * (target - s)
        out[a:b] = sp.csr_matrix((q, np.arange(s1 - s0), indptr[a : b + 1] - s0), shape=(b - a, s1 - s0)) @ hg
    return out


def observed_scores(indptr, indices, x, h) -> np.ndarray:
    """float64 [nnz] <x_u, h_{indices[k]}> for every stored entry k (row range by row range)."""
    out = np.empty(len(indices))
    for a, b in _row_ranges(indptr):
        s0, s1 = indptr[a], indptr[b]
        out[s0:s1] = np.einsum("kd,kd->k", h[indices[s0:s1]], np.repeat(x[a:b], np.diff(indptr[a : b + 1]), axis=0))
    return out


def cg_half_step(indptr, indices, conf, w, h, lam, alpha0: float, steps: int, floor: float = FLOOR) -> np.ndarray:
    """float64 [n, d] warm-started CG as alsx.core.solvers.conjugate_gradient (and the CPU kernel):
    r0 = b - A x0 from x0 = w, ``steps`` steps, a row stops once |r|^2 <= floor (alpha = beta = 0
    from then on); rows without entries get their optimum 0."""
    w, h, conf = (np.asarray(a, np.float64) for a in (w, h, conf))
    gram = h.T @ h

    def shared(x):
        return alpha0 * x @ gram + lam[:, None] * x

    def matvec(x):
        return shared(x) - observed_pass(indptr, indices, conf, x, h, 0.0)

    x = w.copy()
    r = observed_pass(indptr, indices, conf, x, h, 1.0) - shared(x)
    p = r.copy()
    rs = np.sum(r * r, 1)
    for _ in range(steps):
        ap = matvec(p)
        pap = np.sum(p * ap, 1)
        live = (rs > floor) & (pap > 0)
        alpha = np.where(live, rs / np.where(live, pap, 1.0), 0.0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rs_new = np.sum(r * r, 1)
        beta = np.where(live, rs_new / np.where(live, rs, 1.0), 0.0)
        p = r + beta[:, None] * p
        rs = rs_new
    x[np.diff(indptr) == 0] = 0.0
    return x


def block1_half_step(indptr, indices, conf, w, h, lam, alpha0: float, sweeps: int = 1) -> np.ndarray:
    """float64 [n, d] iALS++ with blocks of one coordinate in the eigenbasis of h^T h, as the CPU
    backend's 'block' solver (alsx.core.cpu_block, its default block of 1): rotate both tables
    by Q (h^T h = Q diag(e) Q^T, eigenvalues ascending), sweep the coordinates in order with
    exact one-dimensional steps on the row's objective, rotate back."""
    w, h, conf = (np.asarray(a, np.float64) for a in (w, h, conf))
    n, d = w.shape
    ru = _entry_rows(indptr)
    e, q = np.linalg.eigh(h.T @ h)
    e = np.maximum(e, 0.0)
    x, hr = w @ q, h @ q
    sc = np.sqrt(conf)
    a = sc[:, None] * hr[indices]  # [nnz, d] sqrt(c) h_i in the eigenbasis
    r = sc * (1.0 - np.einsum("kd,kd->k", hr[indices], x[ru]))  # sqrt(c) (1 - <h_i, x_u>)
    for _ in range(sweeps):
        for j in range(d):
            num = np.bincount(ru, a[:, j] * r, minlength=n)
            den = np.bincount(ru, a[:, j] ** 2, minlength=n)
            dj = alpha0 * e[j] + lam
            delta = (num - dj * x[:, j]) / (den + dj)
            x[:, j] += delta
            r -= delta[ru] * a[:, j]
    x[np.diff(indptr) == 0] = 0.0
    return x @ q.T


def csr_loss(indptr, indices, conf, w, h, lam_w, lam_h, alpha0: float) -> dict:
    """The objective's parts in float64 (observed over stored entries, unobserved through the Gramians)."""
    w, h = np.asarray(w, np.float64), np.asarray(h, np.float64)
    s = observed_scores(indptr, indices, w, h)
    obs = float(np.sum(np.asarray(conf, np.float64) * (s - 1.0) ** 2))
    unobs = float(alpha0 * np.sum((w.T @ w) * (h.T @ h)))
    reg = float(lam_w @ np.sum(w * w, 1) + lam_h @ np.sum(h * h, 1))
    return {"observed": obs, "unobserved": unobs, "regularisation": reg, "total": obs + unobs + reg}


def trajectory(rows, cols, hp, w0, h0, epochs: int, solver: str = "cg") -> tuple[list[dict], np.ndarray, np.ndarray]:
    """float64 epochs from (w0, h0) as the engines run them (rows half-step, then columns):
    (loss parts after each epoch, final w, final h).  ``solver``: 'cg' (hp.cg_steps steps) or
    'block1' (one sweep of blocks of one in the eigenbasis: the CPU backend's 'block')."""
    a0 = hp.unobserved_weight
    lam_w = csr_lambdas(rows.indptr, rows.n_cols, hp.reg, a0, hp.nu)
    lam_h = csr_lambdas(cols.indptr, cols.n_cols, hp.reg, a0, hp.nu)

    def half(side, x, fixed, lam):
        if solver == "cg":
            return cg_half_step(side.indptr, side.indices, side.values, x, fixed, lam, a0, hp.cg_steps)
        return block1_half_step(side.indptr, side.indices, side.values, x, fixed, lam, a0)

    w, h = np.asarray(w0, np.float64), np.asarray(h0, np.float64)
    losses = []
    for _ in range(epochs):
        w = half(rows, w, h, lam_w)
        h = half(cols, h, w, lam_h)
        losses.append(csr_loss(rows.indptr, rows.indices, rows.values, w, h, lam_w, lam_h, a0))
    return losses, w, h
