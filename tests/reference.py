"""A float64 NumPy oracle of the iALS objective and row update on tiny dense matrices."""

from __future__ import annotations

import numpy as np


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
    unobs = float(alpha0 * np.sum(s ** 2))
    reg_part = float(np.sum(row_lambdas(conf, reg, alpha0, nu) * (w ** 2).sum(1))
                     + np.sum(row_lambdas(conf.T, reg, alpha0, nu) * (h ** 2).sum(1)))
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
