"""Full-ranking evaluation under every split protocol.

Each evaluated row (a row with ground truth) is scored against all columns, its
history (training entries, or the fold-in history of a held-out row) excluded,
and the top-k compared with its ground truth.  A popularity baseline is scored
under the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from alsx.config import HParams
from alsx.data.matrix import CSR, Interactions, coo_to_csr
from alsx.data.split import Split
from alsx.eval.metrics import ranking_metrics
from alsx.eval.popularity import item_counts, popularity_topk
from alsx.serve.foldin import fold_in
from alsx.serve.topk import topk_scores

TopK = Callable[[np.ndarray, int, CSR], np.ndarray]


def compact_rows(x: Interactions, rows: np.ndarray, alpha: float | None = None) -> CSR:
    """CSR whose row j holds x's entries of row ``rows[j]`` (rows sorted)."""
    pos = np.searchsorted(rows, x.rows)
    keep = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == x.rows)
    return coo_to_csr(pos[keep], x.cols[keep], x.confidence(alpha)[keep], len(rows), x.shape[1])


def eval_rows(split: Split) -> np.ndarray:
    """int32 sorted ids of the rows that have ground truth."""
    return np.unique(split.test.rows).astype(np.int32)


def evaluate(
    w: np.ndarray,
    h: np.ndarray,
    split: Split,
    hp: HParams,
    ks: tuple[int, ...] = (20, 50),
    alpha: float | None = None,
    baseline: bool = True,
    col_counts: np.ndarray | None = None,
    topk: TopK | None = None,
    queries: Callable[[np.ndarray, CSR], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Ranking metrics of a model and of the popularity baseline.

    Args:
      w: [n_rows, d] row table (rows of held-out-rows splits are folded in, not read).
      h: [n_cols, d] column table.
      split: the split the model was trained on (``split.train``).
      hp: training hyper-parameters (fold-in uses the same regulariser).
      alpha: confidence scaling used in training (fold-in uses the same).
      col_counts: [n_cols] training entries per column for the popularity baseline
        (default: counted from ``split.train``; pass the global counts when the split
        holds one process's rows).
      topk: (query [n, d], k, exclude CSR [n, m]) -> int32 ids [n, k]; default
        ``topk_scores`` against ``h`` on one device.  :func:`sharded_scorer` scores each
        column shard on its own device instead.
      queries: (evaluated rows int32 [n], their history CSR [n, m]) -> float32 [n, d]
        query embeddings; default: ``w``'s rows, or rows folded in against ``h`` for
        held-out-rows splits.  With ``queries`` and ``topk`` the tables may be None.

    Returns:
      {"model": metrics, "popularity": metrics} (see ``ranking_metrics``).
    """
    rows = eval_rows(split)
    truth = compact_rows(split.test, rows)
    history = compact_rows(split.train if split.foldin is None else split.foldin, rows, alpha)
    if queries is not None:
        query = queries(rows, history)
    elif split.foldin is not None:
        query = fold_in(h, history, hp) if len(rows) else np.zeros((0, h.shape[1]), np.float32)
    else:
        query = np.asarray(w, np.float32)[rows]
    kmax = max(ks)
    top = topk_scores(query, h, kmax, exclude=history)[1] if topk is None else topk(query, kmax, history)
    out = {"model": ranking_metrics(top, truth, ks)}
    if baseline:
        pop = popularity_topk(history, item_counts(split.train) if col_counts is None else col_counts, kmax)
        out["popularity"] = ranking_metrics(pop, truth, ks)
    return out


def take_rows(csr: CSR, rows: np.ndarray, alpha: float | None = None) -> CSR:
    """CSR [len(rows), n_cols] holding ``csr``'s rows ``rows`` (reads only those rows of a mapped CSR).

    With ``alpha`` the values become confidences 1 + alpha * value, as in training.
    """
    rows = np.asarray(rows, dtype=np.int64)
    indptr = np.asarray(csr.indptr)
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    out_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=out_ptr[1:])
    pos = np.repeat(starts - out_ptr[:-1], lens) + np.arange(out_ptr[-1], dtype=np.int64)
    values = np.asarray(csr.values[pos], dtype=np.float32)
    if alpha is not None:
        values = 1.0 + np.float32(alpha) * values
    return CSR(indptr=out_ptr, indices=np.asarray(csr.indices[pos], dtype=np.int32), values=values, n_cols=csr.n_cols)


def evaluate_heldout_csr(
    h: np.ndarray,
    history: CSR,
    truth: CSR,
    hp: HParams,
    ks: tuple[int, ...] = (20, 50),
    alpha: float | None = None,
    col_counts: np.ndarray | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    score_bytes: int = 256 << 20,
    *,
    part: tuple[int, int] | None = None,
    topk: TopK | None = None,
    queries: Callable[[np.ndarray, CSR], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out-rows evaluation from CSRs (e.g. a WebGraph dataset's fold-in/truth matrices).

    Row j of ``history`` and ``truth`` belong to the same held-out row; the row is folded
    in from its history against ``h``, scored against every column (history excluded)
    and its top-k compared with its truth.  Rows without truth are skipped.

    Args:
      h: [n_cols, d] column table.
      history, truth: CSR [n_heldout, n_cols] (may be memory-mapped).
      col_counts: [n_cols] training entries per column; adds a popularity baseline.
      max_rows: evaluate a seeded random sample of this many rows (full ranking over
        millions of columns costs n_rows x n_cols x d).
      score_bytes: memory for one batch of dense scores (sets the scoring batch size).
      part: (i, n): evaluate only every n-th of the (sampled) rows from the i-th, for
        process i of n; merge with :func:`merge_across_processes`.
      topk, queries: as for :func:`evaluate` (then ``h`` may be None).

    Returns:
      {"model": metrics} (plus "popularity" with ``col_counts``); metrics as ``ranking_metrics``.
    """
    rows = np.flatnonzero(np.diff(np.asarray(truth.indptr)) > 0)
    if max_rows is not None and len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    if part is not None:
        rows = rows[part[0] :: part[1]]
    hist = take_rows(history, rows, alpha)
    tru = take_rows(truth, rows)
    query = fold_in(h, hist, hp) if queries is None else queries(rows, hist)
    kmax = max(ks)
    if topk is None:
        # Each batch holds a dense [batch, n_cols] score matrix (1024 rows x 5.7M columns would be 23 GB).
        _, top = topk_scores(query, h, kmax, exclude=hist, score_bytes=score_bytes)
    else:
        top = topk(query, kmax, hist)
    out = {"model": ranking_metrics(top, tru, ks)}
    if col_counts is not None:
        out["popularity"] = ranking_metrics(popularity_topk(hist, np.asarray(col_counts), kmax), tru, ks)
    return out


def evaluate_across_processes(
    w: np.ndarray, h: np.ndarray, split: Split, hp: HParams, ks: tuple[int, ...] = (20, 50), baseline: bool = True, **kw
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` when each process's ``split`` holds its own rows (a collective; ``kw``:
    alpha, col_counts, topk as for :func:`evaluate`, e.g. ``topk=sharded_scorer(...)``).

    Each process scores the rows it holds; every metric is a mean over evaluated rows, so
    the means are combined weighted by ``n_eval_rows``: the result equals one process
    evaluating every row.  ``col_counts``: global training entries per column.
    """
    local = evaluate(w, h, split, hp, ks, baseline=baseline, **kw)  # its topk may be a collective
    return merge_across_processes(local, ks)


def merge_across_processes(local: dict[str, dict[str, float]], ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Each process's metrics of its own rows -> the metrics of all rows (a collective).

    Every metric is a mean over evaluated rows, so the means are combined weighted by
    ``n_eval_rows``: the result equals one process evaluating every row.
    """
    from alsx.distributed import allgather_bytes

    out: dict[str, dict[str, float]] = {}
    names = [f"{m}@{k}" for k in ks for m in ("recall", "recall_gt", "ndcg", "hr", "map")]
    for part in local:
        mine = local[part]
        vec = np.nan_to_num(np.array([mine.get("n_eval_rows", 0)] + [mine.get(n, 0.0) for n in names], np.float64))
        every = np.stack(allgather_bytes(vec))  # [process, 1 + metrics]
        n = every[:, 0]
        out[part] = {name: float(every[:, 1 + i] @ n / max(n.sum(), 1.0)) for i, name in enumerate(names)}
        out[part]["n_eval_rows"] = int(n.sum())
    return out


def sharded_scorer(table, batch_size: int | None = None) -> TopK:
    """A ``topk`` for :func:`evaluate` that scores against a sharded column table in place.

    Each device scores only its column shard and keeps its own top-k, which are merged
    exactly (:func:`alsx.serve.sharded_topk.sharded_topk`): no device holds a batch of
    rows x all columns.  Across processes each process brings its own query rows; they
    are all-gathered (queries and histories only) so every process runs the same
    batches, and each keeps its rows' results.

    Args:
      table: an :class:`alsx.serve.sharded_topk.ShardedTable` (e.g. ``from_engine``).
      batch_size: query rows per device call (default: sized from each device's column shard).
    """
    from alsx.distributed import allgather_bytes
    from alsx.serve.sharded_topk import sharded_topk

    def topk(query: np.ndarray, k: int, exclude: CSR) -> np.ndarray:
        query = np.asarray(query, np.float32)
        d = table.table.shape[1]
        qs = [q.reshape(-1, d) for q in allgather_bytes(query.reshape(-1))]
        lens = allgather_bytes(np.diff(np.asarray(exclude.indptr)).astype(np.int64))
        cols = allgather_bytes(np.asarray(exclude.indices, np.int32))
        lengths = np.concatenate(lens)
        indptr = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        every = CSR(
            indptr=indptr,
            indices=np.concatenate(cols),
            values=np.ones(int(indptr[-1]), np.float32),
            n_cols=exclude.n_cols,
        )
        _, ids = sharded_topk(np.concatenate(qs), table, k, exclude=every, batch_size=batch_size)
        from jax import process_index

        start = sum(len(q) for q in qs[: process_index()])
        return ids[start : start + len(query)]

    return topk
