"""Ranking metrics from top-k ids and ground-truth sets, in pure NumPy.

Inputs everywhere:
  topk: int [n, K] ranked column ids per evaluated row, best first. ``-1`` is
    padding ("no item") and never counts as a hit. Ids within a row are assumed
    distinct (as produced by a top-k).
  truth: the ground truth of the same ``n`` rows, a :class:`~alsx.data.matrix.CSR`
    or a pair ``(indptr int [n + 1], indices int [nnz])``.

Rows whose ground truth is empty are excluded from every mean;
:func:`ranking_metrics` reports how many rows were averaged in ``n_eval_rows``.
A mean over no rows is NaN.

Definitions at cut-off k, for a row with ground truth G and hits rel_i (i = 0-based rank):
  recall@k      = sum(rel) / min(k, |G|)      (Rendle et al. 2022; ALX)
  recall_gt@k   = sum(rel) / |G|              (NGCF / LightGCN)
  ndcg@k        = sum(rel_i / log2(i + 2)) / sum_{i < min(k, |G|)} 1 / log2(i + 2)
  hr@k          = 1 if any hit else 0
  map@k         = sum_i rel_i * precision@(i + 1) / min(k, |G|)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alsx.data.matrix import CSR

Truth = CSR | tuple[np.ndarray, np.ndarray]

_DENOMINATORS = ("min", "truth")


def _truth_arrays(truth: Truth) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(truth, CSR):
        return np.asarray(truth.indptr, dtype=np.int64), np.asarray(truth.indices)
    indptr, indices = truth
    return np.asarray(indptr, dtype=np.int64), np.asarray(indices)


def _check_k(topk: np.ndarray, k: int) -> None:
    if not 1 <= k <= topk.shape[1]:
        raise ValueError(f"k must be in [1, {topk.shape[1]}] (the top-k width). Got {k!r} instead.")


def relevance(topk: np.ndarray, truth: Truth, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Marks which recommended ids are in the row's ground truth.

    Membership is tested on combined ``row * n_cols + id`` keys with one sort and a
    ``searchsorted``, so the cost is O((n k + nnz) log nnz) with no loop over rows.

    Args:
      topk: int [n, K] ranked ids, -1 padded.
      truth: ground truth of the n rows.
      k: cut-off (default K).

    Returns:
      rel: bool [n, k], True where ``topk[r, i]`` is in row r's ground truth.
      n_truth: int64 [n] ground-truth set sizes.
    """
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D [n, K]. Got shape {topk.shape} instead.")
    k = topk.shape[1] if k is None else k
    _check_k(topk, k)
    indptr, indices = _truth_arrays(truth)
    n = topk.shape[0]
    if indptr.shape != (n + 1,):
        raise ValueError(f"truth has {indptr.size - 1} rows but topk has {n}; they must describe the same rows.")
    n_truth = np.diff(indptr)
    ids = topk[:, :k].astype(np.int64)
    if indices.size == 0:
        return np.zeros((n, k), dtype=bool), n_truth

    stride = np.int64(max(int(indices.max()), int(ids.max(initial=-1))) + 1)
    truth_rows = np.repeat(np.arange(n, dtype=np.int64), n_truth)
    truth_keys = np.sort(truth_rows * stride + indices.astype(np.int64))
    query = np.arange(n, dtype=np.int64)[:, None] * stride + ids  # [n, k]
    pos = np.searchsorted(truth_keys, query)
    found = truth_keys[np.minimum(pos, truth_keys.size - 1)] == query
    # -1 padding could alias the previous row's last column in key space.
    return found & (ids >= 0), n_truth


def _mean(per_row: np.ndarray, n_truth: np.ndarray) -> float:
    valid = n_truth > 0
    if not valid.any():
        return float("nan")
    return float(per_row[valid].mean())


# Per-row scores from a relevance matrix; rows with empty truth get 0 (they are masked later).


def _recall_rows(rel: np.ndarray, n_truth: np.ndarray, denominator: str) -> np.ndarray:
    if denominator not in _DENOMINATORS:
        raise ValueError(f"denominator must be one of {_DENOMINATORS}. Got {denominator!r} instead.")
    k = rel.shape[1]
    denom = np.minimum(n_truth, k) if denominator == "min" else n_truth
    return rel.sum(axis=1) / np.maximum(denom, 1)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def _ndcg_rows(rel: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    k = rel.shape[1]
    disc = _discounts(k)
    dcg = rel @ disc
    # Ideal DCG puts min(k, |G|) hits at the top ranks: a prefix sum of the discounts.
    ideal_prefix = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_prefix[np.minimum(n_truth, k)]
    return dcg / np.where(idcg > 0, idcg, 1.0)


def _hit_rows(rel: np.ndarray) -> np.ndarray:
    return rel.any(axis=1).astype(np.float64)


def _ap_rows(rel: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    k = rel.shape[1]
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return (precision * rel).sum(axis=1) / np.maximum(np.minimum(n_truth, k), 1)


def recall_at_k(topk: np.ndarray, truth: Truth, k: int, denominator: str = "min") -> float:
    """Mean recall@k over rows with non-empty ground truth.

    Args:
      topk: int [n, K] ranked ids, -1 padded; K >= k.
      truth: ground truth of the n rows.
      k: cut-off.
      denominator: ``"min"`` divides hits by min(k, |G|) (Rendle et al.; ALX), so a
        perfect ranking scores 1; ``"truth"`` divides by |G| (NGCF / LightGCN).
    """
    rel, n_truth = relevance(topk, truth, k)
    return _mean(_recall_rows(rel, n_truth, denominator), n_truth)


def ndcg_at_k(topk: np.ndarray, truth: Truth, k: int) -> float:
    """Mean NDCG@k with binary relevance, discount 1 / log2(rank + 2) for 0-based rank.

    The ideal DCG places min(k, |G|) relevant items at the top.
    """
    rel, n_truth = relevance(topk, truth, k)
    return _mean(_ndcg_rows(rel, n_truth), n_truth)


def hit_rate_at_k(topk: np.ndarray, truth: Truth, k: int) -> float:
    """Share of rows (with non-empty ground truth) that have at least one hit in the top k."""
    rel, n_truth = relevance(topk, truth, k)
    return _mean(_hit_rows(rel), n_truth)


def map_at_k(topk: np.ndarray, truth: Truth, k: int) -> float:
    """Mean average precision@k: sum of precision@i at each hit rank i, over min(k, |G|)."""
    rel, n_truth = relevance(topk, truth, k)
    return _mean(_ap_rows(rel, n_truth), n_truth)


def ranking_metrics(topk: np.ndarray, truth: Truth, ks: Sequence[int] = (20, 50)) -> dict[str, float]:
    """All metrics at every cut-off in ``ks``, from one membership test.

    Returns:
      ``{"recall@k", "recall_gt@k", "ndcg@k", "hr@k", "map@k"}`` for each k, plus
      ``"n_eval_rows"``: the number of rows with non-empty ground truth (those averaged).
    """
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must name at least one cut-off.")
    topk = np.asarray(topk)
    for k in ks:
        _check_k(topk, k)
    rel_all, n_truth = relevance(topk, truth, max(ks))
    out: dict[str, float] = {}
    for k in ks:
        rel = rel_all[:, :k]
        out[f"recall@{k}"] = _mean(_recall_rows(rel, n_truth, "min"), n_truth)
        out[f"recall_gt@{k}"] = _mean(_recall_rows(rel, n_truth, "truth"), n_truth)
        out[f"ndcg@{k}"] = _mean(_ndcg_rows(rel, n_truth), n_truth)
        out[f"hr@{k}"] = _mean(_hit_rows(rel), n_truth)
        out[f"map@{k}"] = _mean(_ap_rows(rel, n_truth), n_truth)
    out["n_eval_rows"] = int(np.count_nonzero(n_truth > 0))
    return out
