"""Inputs of the engine conformance suite (tests/test_engine_conformance.py and its child).

Small enough for CI on two cores, shaped like the data the engines failed on: a web-like
graph with hubs, self-links, dangling rows and columns and small isolated components
(rows whose optimum is ~0: their tables shrink geometrically, epoch after epoch, towards
float32's subnormal range: the regime that made the CPU kernel diverge on cnr-2000), and a
user-item matrix with graded confidences.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alsx.config import HParams, Packing
from alsx.data.matrix import CSR, coo_to_csr

# Narrow buckets (few programs to compile) and long rows (hubs > max_width) on the JAX engines.
PACKING = Packing(n_buckets=1, max_width=64, batch_entries=512)
EPOCHS = 30
SEED = 0


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    rows: CSR
    cols: CSR
    hp: HParams
    dying: np.ndarray  # row ids whose optimum is ~0 (isolated components), may be empty


def _csr_pair(r: np.ndarray, c: np.ndarray, v: np.ndarray, n: int, m: int) -> tuple[CSR, CSR]:
    return coo_to_csr(r, c, v, n, m), coo_to_csr(c, r, v, m, n)


def web_graph(n: int = 1200, seed: int = 1) -> tuple[CSR, CSR, np.ndarray]:
    """Square binary link matrix; returns (rows, cols, ids of the rows of isolated components).

    Layout of the node ids: communities [0, 840) (dense inside, a few links out, self-links
    on half of them), 4 hubs among them (in-links from ~30 % of all nodes, > max_width), one
    directory page (150 out-links); dangling rows [840, 940) (in-links, no out-links);
    dangling columns [940, 1040) (out-links, no in-links); isolated pairs u -> v and chains
    u -> v -> w from 1040 on, linking nowhere else and linked from nowhere else; the last
    10 nodes have no links at all.
    """
    rng = np.random.default_rng(seed)
    comm, k = 840, 7
    size = comm // k
    r, c = [], []
    for u in range(comm):
        g = u // size
        deg = 1 + rng.poisson(8)
        r.append(np.full(deg, u))
        c.append(g * size + rng.integers(0, size, deg))  # inside the community
        out = rng.poisson(1)
        r.append(np.full(out, u))
        c.append(rng.integers(0, comm, out))  # a few links anywhere
        if u % 2 == 0:
            r.append([u])
            c.append([u])  # self-link
    hubs = np.array([3, 200, 401, 777])
    for hub in hubs:
        src = np.flatnonzero(rng.random(n - 10) < 0.3)
        src = src[(src < 840) | ((src >= 940) & (src < 1040))]  # only nodes that may have out-links
        r.append(src)
        c.append(np.full(len(src), hub))
    r.append(np.full(150, 5))
    c.append(rng.choice(comm, 150, replace=False))  # a directory page
    dangling_rows = np.arange(840, 940)
    src = rng.integers(0, comm, 300)
    r.append(src)
    c.append(rng.choice(dangling_rows, 300))  # in-links only
    dangling_cols = np.arange(940, 1040)
    for u in dangling_cols:  # out-links only
        deg = 1 + rng.poisson(4)
        r.append(np.full(deg, u))
        c.append(rng.integers(0, comm, deg))
    iso, node = [], 1040
    while node + 3 <= n - 10:
        if rng.random() < 0.5:  # pair u -> v
            r.append([node])
            c.append([node + 1])
            iso.append(node)
            node += 2
        else:  # chain u -> v -> w, u -> w
            r.append([node, node, node + 1])
            c.append([node + 1, node + 2, node + 2])
            iso.extend([node, node + 1])
            node += 3
    r, c = np.concatenate(r).astype(np.int64), np.concatenate(c).astype(np.int64)
    pairs = np.unique(np.stack([r, c], 1), axis=0)
    rows, cols = _csr_pair(pairs[:, 0], pairs[:, 1], np.ones(len(pairs), np.float32), n, n)
    return rows, cols, np.array(iso, np.int64)


def user_item(n_users: int = 700, n_items: int = 500, nnz: int = 14000, seed: int = 2) -> tuple[CSR, CSR]:
    """Power-law activity and popularity, confidences 1 + 2 * count (count 1..5); one user and
    one item without entries."""
    rng = np.random.default_rng(seed)

    def draw(n, size):
        p = (np.arange(n) + 5.0) ** -0.9
        return rng.permutation(n)[rng.choice(n, size, p=p / p.sum())]

    u, i = draw(n_users, nnz), draw(n_items, nnz)
    keep = (u != 7) & (i != 11)
    pairs = np.unique(np.stack([u[keep], i[keep]], 1), axis=0)
    conf = 1.0 + 2.0 * rng.integers(1, 6, len(pairs))
    return _csr_pair(pairs[:, 0], pairs[:, 1], conf.astype(np.float32), n_users, n_items)


def problems() -> list[Problem]:
    """The suite's inputs with their hyper-parameters.

    Each uses alsx's default solver (CG, 3 steps) and nu = 1.
    web: lambda_u = reg (|I_u| + alpha0 n) ~ 5 for a one-link row, as at cnr-2000's defaults
    (29 there): an isolated pair's tables shrink by ~1/lambda^2 per epoch, under 1e-15 (where
    CG's |r|^2 falls below RESIDUAL_FLOOR) well within the 30 epochs.
    """
    wr, wc, iso = web_graph()
    ur, uc = user_item()
    return [
        Problem("web", wr, wc, HParams(dim=16, reg=0.1, unobserved_weight=0.03, nu=1.0, cg_steps=3), iso),
        Problem(
            "useritem",
            ur,
            uc,
            HParams(dim=16, reg=0.01, unobserved_weight=0.05, nu=1.0, cg_steps=3),
            np.empty(0, np.int64),
        ),
    ]
