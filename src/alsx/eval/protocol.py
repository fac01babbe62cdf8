"""Full-ranking evaluation under every split protocol.

Each evaluated row (a row with ground truth) is scored against all columns, its
history (training entries, or the fold-in history of a held-out row) excluded,
and the top-k compared with its ground truth.  A popularity baseline is scored
under the same protocol.
"""

from __future__ import annotations

import numpy as np

from alsx.config import HParams
from alsx.data.matrix import CSR, Interactions, coo_to_csr
from alsx.data.split import Split
from alsx.eval.metrics import ranking_metrics
from alsx.eval.popularity import item_counts, popularity_topk
from alsx.serve.foldin import fold_in
from alsx.serve.topk import topk_scores


def _compact_rows(x: Interactions, rows: np.ndarray, alpha: float | None = None) -> CSR:
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
) -> dict[str, dict[str, float]]:
    """Ranking metrics of a model and of the popularity baseline.

    Args:
      w: [n_rows, d] row table (rows of held-out-rows splits are folded in, not read).
      h: [n_cols, d] column table.
      split: the split the model was trained on (``split.train``).
      hp: training hyper-parameters (fold-in uses the same regulariser).
      alpha: confidence scaling used in training (fold-in uses the same).

    Returns:
      {"model": metrics, "popularity": metrics} (see ``ranking_metrics``).
    """
    rows = eval_rows(split)
    truth = _compact_rows(split.test, rows)
    if split.foldin is not None:
        history = _compact_rows(split.foldin, rows, alpha)
        query = fold_in(h, history, hp)
    else:
        history = _compact_rows(split.train, rows, alpha)
        query = np.asarray(w, np.float32)[rows]
    kmax = max(ks)
    _, top = topk_scores(query, h, kmax, exclude=history)
    out = {"model": ranking_metrics(top, truth, ks)}
    if baseline:
        pop = popularity_topk(history, item_counts(split.train), kmax)
        out["popularity"] = ranking_metrics(pop, truth, ks)
    return out
