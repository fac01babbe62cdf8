"""Summary statistics of (web) graphs, streamed over CSR row blocks.

All functions take :class:`alsx.data.matrix.CSR` objects (in RAM or memory-mapped
from a dataset) and read them block by block, so they run on graphs larger than RAM.
Definitions follow the LAW figures quoted for cnr-2000:

* an arc u -> v is *reciprocated* when v -> u exists; a self-link is its own
  reverse and counts as reciprocated (that is how cnr-2000 gets 27.0 %; without
  self-links it is 24.2 % of all arcs);
* degree tails are fitted with the discrete power-law MLE approximation of
  Clauset, Shalizi & Newman (2009), alpha = 1 + n / sum(ln(x / (xmin - 1/2))),
  with xmin chosen by minimum Kolmogorov-Smirnov distance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from alsx.data.matrix import CSR, coo_to_csr
from alsx.webgraph.dataset import DEFAULT_BLOCK_NNZ, WebGraphDataset, csr_blocks

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def _blocks(csr: CSR, block_nnz: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(r0, r1, rows int64 [m], cols int64 [m]) per row block."""
    for r0, r1, rows, cols in csr_blocks(csr, block_nnz):
        yield r0, r1, rows, cols.astype(np.int64)


def powerlaw_mle(degrees: np.ndarray, xmin: int | None = None, *, min_tail: int = 50) -> dict[str, float]:
    """Fits P(d) ~ d^-alpha on the tail d >= xmin.

    Args:
      degrees: int [n] (zeros ignored).
      xmin: tail start; None picks the candidate with the smallest KS distance
        among about 60 log-spaced values that leave >= ``min_tail`` points.
    Returns:
      ``alpha``, ``xmin``, ``n_tail``, ``ks`` (NaN alpha if the tail is too short).
    """
    d = np.sort(np.asarray(degrees)[np.asarray(degrees) > 0]).astype(np.float64)
    nan = {"alpha": float("nan"), "xmin": float("nan"), "n_tail": 0, "ks": float("nan")}
    if len(d) < 2:
        return nan

    def fit(x0: float) -> tuple[float, float, int]:
        tail = d[np.searchsorted(d, x0) :]
        n = len(tail)
        s = np.log(tail / (x0 - 0.5)).sum()
        if n < 2 or s <= 0:
            return float("nan"), float("inf"), n
        alpha = 1.0 + n / s
        # KS on the survival function at the distinct tail values.
        vals, first = np.unique(tail, return_index=True)
        emp = 1.0 - first / n  # P(X >= v)
        model = ((vals - 0.5) / (x0 - 0.5)) ** (1.0 - alpha)
        return alpha, float(np.abs(emp - model).max()), n

    if xmin is not None:
        a, ks, n = fit(float(xmin))
        return {"alpha": a, "xmin": float(xmin), "n_tail": n, "ks": ks}
    top = d[max(0, len(d) - min_tail)]  # largest xmin that keeps min_tail points
    if top <= 1:
        cands = np.array([1.0])
    else:
        cands = np.unique(np.round(np.geomspace(1, top, 60)))
    best = None
    for x0 in cands:
        a, ks, n = fit(float(x0))
        if n >= min_tail and np.isfinite(a) and (best is None or ks < best[1]):
            best = (a, ks, n, float(x0))
    if best is None:
        return nan
    return {"alpha": best[0], "xmin": best[3], "n_tail": best[2], "ks": best[1]}


def degree_summary(degrees: np.ndarray, *, quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
    """Mean, zeros, quantiles, max and power-law tail fit of int [n] degrees."""
    d = np.asarray(degrees)
    q = np.quantile(d, quantiles) if len(d) else np.zeros(len(quantiles))
    return {
        "mean": float(d.mean()) if len(d) else 0.0,
        "zeros": int((d == 0).sum()),
        "quantiles": {f"p{100 * p:g}": float(v) for p, v in zip(quantiles, q)},
        "max": int(d.max()) if len(d) else 0,
        "powerlaw": powerlaw_mle(d),
    }


def self_loops(csr: CSR, *, block_nnz: int = DEFAULT_BLOCK_NNZ) -> int:
    """Number of entries (i, i)."""
    return sum(int((r == c).sum()) for _, _, r, c in _blocks(csr, block_nnz))


def reciprocity(csr: CSR, csc: CSR, *, block_nnz: int = DEFAULT_BLOCK_NNZ) -> dict[str, float]:
    """Share of arcs u -> v whose reverse v -> u exists.

    Row u of ``csr`` (out-links) and row u of ``csc`` (in-links) are both sorted,
    so an arc is reciprocated when its target appears in the source's in-list.

    Args:
      csr: [n x n] the graph; csc: its transpose.
    Returns:
      ``reciprocated`` (count, self-links included), ``fraction`` and
      ``fraction_excluding_self`` (non-self reciprocated arcs / all arcs).
    """
    if csr.n_rows != csc.n_rows or csr.nnz != csc.nnz:
        raise ValueError("csc must be the transpose of csr")
    rec = selfs = 0
    cip = np.asarray(csc.indptr)
    for r0, r1, r, c in _blocks(csr, block_nnz):
        s, e = int(cip[r0]), int(cip[r1])
        rt = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(cip[r0 : r1 + 1]))
        k_out = (r << 32) | c  # sorted: rows ascending, columns sorted within rows
        k_in = (rt << 32) | np.asarray(csc.indices[s:e], dtype=np.int64)
        hit = np.isin(k_out, k_in, assume_unique=True)
        rec += int(hit.sum())
        selfs += int((hit & (r == c)).sum())
    nnz = max(csr.nnz, 1)
    return {"reciprocated": rec, "fraction": rec / nnz, "fraction_excluding_self": (rec - selfs) / nnz}


def within_host_fraction(csr: CSR, node_host: np.ndarray, *, block_nnz: int = DEFAULT_BLOCK_NNZ) -> float:
    """Share of arcs whose two ends are in the same host (``node_host``: int [n_nodes])."""
    h = np.asarray(node_host)
    same = sum(int((h[r] == h[c]).sum()) for _, _, r, c in _blocks(csr, block_nnz))
    return same / max(csr.nnz, 1)


def graph_stats(
    csr: CSR, csc: CSR, *, node_host: np.ndarray | None = None, block_nnz: int = DEFAULT_BLOCK_NNZ
) -> dict[str, Any]:
    """All summaries of a graph given as CSR [n x n] and its transpose."""
    out_deg = np.diff(np.asarray(csr.indptr))
    in_deg = np.diff(np.asarray(csc.indptr))
    res: dict[str, Any] = {
        "nodes": csr.n_rows,
        "arcs": csr.nnz,
        "self_loops": self_loops(csr, block_nnz=block_nnz),
        "reciprocity": reciprocity(csr, csc, block_nnz=block_nnz),
        "out_degree": degree_summary(out_deg),
        "in_degree": degree_summary(in_deg),
    }
    if node_host is not None:
        res["within_host"] = within_host_fraction(csr, node_host, block_nnz=block_nnz)
    return res


def dataset_stats(ds: WebGraphDataset, *, block_nnz: int = DEFAULT_BLOCK_NNZ) -> dict[str, Any]:
    """:func:`graph_stats` of a dataset's training graph (the whole graph when nothing is held out)."""
    return graph_stats(ds.train_csr(), ds.train_csc(), node_host=ds.array("node_host"), block_nnz=block_nnz)


def edges_to_csr_pair(rows: np.ndarray, cols: np.ndarray, n_nodes: int) -> tuple[CSR, CSR]:
    """In-memory (CSR, CSC) of a duplicate-free edge list, e.g. a ``web_cnr2000.npz``."""
    ones = np.ones(len(rows), dtype=np.float32)
    return coo_to_csr(rows, cols, ones, n_nodes, n_nodes), coo_to_csr(cols, rows, ones, n_nodes, n_nodes)
