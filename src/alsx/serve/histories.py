"""Interaction histories for serving: what a user passes as ``user_items``/``interactions`` (a
scipy.sparse matrix or lists of ids) as a CSR of confidences, and a CSR with rows replaced
(``partial_fit_*``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from alsx.data.matrix import CSR
from alsx.data.vocab import Vocab
from alsx.errors import UsageError
from alsx.serve.foldin import confidences
from alsx.serve.ids import IdSpace, Unknown, to_indices


def as_history(
    items: Any,
    n_rows: int | None,
    n_cols: int,
    vocab: Vocab | None,
    alpha: float | None,
    *,
    ids: IdSpace = "original",
    unknown: Unknown = "raise",
    what: str = "column",
) -> CSR:
    """CSR [n, n_cols] of confidences from a scipy.sparse matrix [n, n_cols] (raw values) or a list
    of n lists of ``what`` ids (binary); ``n_rows``: the n expected (None: any)."""
    if sp.issparse(items):
        m = sp.csr_matrix(items, dtype=np.float64)
        if m.shape[1] != n_cols:
            raise UsageError(f"the sparse history has {m.shape[1]} columns; the model has {n_cols} {what}s")
        m.sum_duplicates()
        m.sort_indices()
        indptr, indices, values = m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data
    elif isinstance(items, (list, tuple)) and all(isinstance(r, (list, tuple, np.ndarray)) for r in items):
        found = [
            to_indices(r, vocab, n_cols, what, ids=ids, unknown=unknown)[0] if len(r) else np.zeros(0, np.int64)
            for r in items
        ]
        found = [np.unique(f[f >= 0]) for f in found]  # sorted, duplicates collapsed (binary)
        indptr = np.concatenate([[0], np.cumsum([len(f) for f in found])]).astype(np.int64)
        indices = np.concatenate(found + [np.zeros(0, np.int64)]).astype(np.int32)
        values = np.ones(len(indices))
    else:
        raise UsageError(
            f"a history must be a scipy.sparse matrix (one row per query, one column per model "
            f"{what}) or a list of lists of {what} ids, got {type(items).__name__}"
        )
    if n_rows is not None and len(indptr) - 1 != n_rows:
        raise UsageError(f"the history has {len(indptr) - 1} rows for {n_rows} queries (one row per query)")
    return CSR(indptr=indptr, indices=indices, values=confidences(values, alpha), n_cols=n_cols)


def replace_rows(csr: CSR, rows: np.ndarray, new: CSR, n_rows: int) -> CSR:
    """``csr`` grown to ``n_rows`` rows with rows ``rows`` [r] replaced by the rows of ``new`` [r, m]."""
    m = sp.csr_matrix((csr.values, csr.indices, csr.indptr), shape=(csr.n_rows, csr.n_cols))
    m.resize((n_rows, max(csr.n_cols, new.n_cols)))
    keep = np.ones(n_rows)
    keep[rows] = 0.0
    owner = np.repeat(rows, np.diff(new.indptr))
    m = (sp.diags(keep) @ m + sp.csr_matrix((new.values, (owner, new.indices)), shape=m.shape)).tocsr()
    m.eliminate_zeros()  # dropped rows (confidences are > 0)
    m.sort_indices()
    return CSR(
        indptr=m.indptr.astype(np.int64),
        indices=m.indices.astype(np.int32),
        values=m.data.astype(np.float32),
        n_cols=m.shape[1],
    )
