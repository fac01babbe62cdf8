"""The serving half of ``alsx.ALS``: recommend, similar, fold-in and partial fits, in the user's ids.

Every method takes and returns *original* ids (the vocabularies read at ``fit``; plain
indices for a model without one) unless given ``ids="index"``, which switches the queries,
the filters, list-of-list histories and the returned ids to dense indices together.
Unknown ids raise one :class:`~alsx.serve.ids.UnknownIdError` naming them, or with
``unknown="skip"`` give empty result rows (queries) or are left out (filters, histories).
Returned ids are padded with -1 (int ids) or "" (str ids) where fewer than k remain, their
scores with -inf.

Histories (``user_items``, ``interactions``) are a scipy.sparse matrix with one row per
query over the model's columns (values as given to ``fit``: confidences 1 + alpha * value,
or 1 without alpha) or a list of lists of column ids (binary). Fold-in solves the training
objective exactly (``alsx.serve.foldin.solve_histories``: training lambda, nu, alpha0 and
alpha), the same rows the training's row update converges to.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from alsx.data.matrix import CSR
from alsx.data.vocab import Vocab
from alsx.errors import UsageError
from alsx.serve.foldin import gramian, row_system, solve_histories
from alsx.serve.histories import as_history, replace_rows
from alsx.serve.ids import IdSpace, Unknown, to_ids, to_indices
from alsx.serve.topk import NUMPY_SCORES, PAD_ID, topk_numpy, topk_scores

Result = tuple[np.ndarray, np.ndarray]  # (ids [n, k], scores float32 [n, k])


class NotFittedError(UsageError, AttributeError):
    """A serving method was called before ``fit`` or ``ALS.load`` (as scikit-learn's NotFittedError,
    a ValueError and an AttributeError)."""


class Serving:
    """Serving methods of a fitted ``ALS`` (its row_embeddings_, col_embeddings_, train_, vocabularies,
    hparams_ and alpha). A mixin: the estimator's state lives in ``alsx.model.ALS``."""

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if getattr(self, "row_embeddings_", None) is None:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted: call fit() or ALS.load() first"
                + (
                    " (it was fitted with gather_tables=False: its tables are on the devices only)"
                    if hasattr(self, "row_embeddings_")
                    else ""
                )
            )

    def _cached(self, key: str, make) -> Any:
        cache = self.__dict__.setdefault("_serving_cache", {})  # dropped whenever a table changes
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def _forget(self) -> None:
        self.__dict__.pop("_serving_cache", None)

    def _side(self, side: str) -> tuple[np.ndarray, Vocab | None, str]:
        if side == "row":
            return self.row_embeddings_, self.row_vocab_, "row"
        return self.col_embeddings_, self.col_vocab_, "column"

    def _index(self, given: Any, side: str, ids: IdSpace, unknown: Unknown = "raise") -> tuple[np.ndarray, np.ndarray]:
        table, vocab, what = self._side(side)
        return to_indices(given, vocab, table.shape[0], what, ids=ids, unknown=unknown)

    def _mask(self, side: str, filter_ids: Any, only: Any, ids: IdSpace, unknown: Unknown) -> np.ndarray | None:
        """float32 [m] 0 / -inf over ``side``'s table: -inf for ``filter_ids``, and for all but ``only``."""
        if filter_ids is None and only is None:
            return None
        m = self._side(side)[0].shape[0]
        mask = np.zeros(m, np.float32)
        if only is not None:
            allowed, known = self._index(only, side, ids, unknown)
            mask[:] = -np.inf
            mask[allowed[known]] = 0.0
        if filter_ids is not None:
            dropped, known = self._index(filter_ids, side, ids, unknown)
            mask[dropped[known]] = -np.inf
        return mask

    def _history(self, items: Any, n: int | None, ids: IdSpace, unknown: Unknown, side: str = "column") -> CSR:
        table, vocab, what = self._side(side)
        return as_history(items, n, table.shape[0], vocab, self.alpha, ids=ids, unknown=unknown, what=what)

    def _topk(
        self,
        query: np.ndarray,
        side: str,
        k: int,
        exclude: CSR | None,
        exclude_rows: np.ndarray | None,
        mask: np.ndarray | None,
        batch_size: int | None = None,
    ) -> Result:
        """Dense (ids [n, k], scores [n, k]) of ``query`` [n, d] against ``side``'s table (or its unit rows
        when side is 'unit-row' / 'unit-column'), NumPy for a few rows, jitted batches otherwise."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise UsageError(f"k must be an integer >= 1, got {k!r}")
        table = self._table(side)
        n, m = query.shape[0], table.shape[0]
        if n * m <= NUMPY_SCORES and batch_size is None:
            excluded = None if exclude is None else [exclude.row(int(r))[0] for r in exclude_rows]
            scores, top = topk_numpy(query, table, int(k), excluded, mask)
        else:
            dev = self._cached(f"device-{side}", lambda: jnp.asarray(table))  # one copy, not one per call
            scores, top = topk_scores(
                query,
                dev,
                int(k),
                exclude=exclude,
                exclude_ids=exclude_rows,
                batch_size=batch_size,
                exclude_cols=None if mask is None else np.flatnonzero(np.isneginf(mask)),
            )
        return top, scores

    def _table(self, side: str) -> np.ndarray:
        if side.startswith("unit-"):

            def unit():
                t = np.asarray(self._side(side[5:])[0], np.float32)
                norms = np.linalg.norm(t, axis=1, keepdims=True)
                return t / np.where(norms > 0, norms, 1.0)  # zero rows stay zero

            return self._cached(side, unit)
        return np.asarray(self._side(side)[0], np.float32)

    def _gram(self, side: str) -> np.ndarray:
        return self._cached(f"gram-{side}", lambda: gramian(self._side(side)[0]))

    def _out(self, top: np.ndarray, scores: np.ndarray, side: str, ids: IdSpace) -> Result:
        return to_ids(top, self._side(side)[1], ids), scores

    # ------------------------------------------------------------------ recommend
    def recommend(
        self,
        rows: Any,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        user_items: Any = None,
        recalculate_user: bool = False,
        filter_items: Any = None,
        items: Any = None,
        ids: IdSpace = "original",
        unknown: Unknown = "raise",
        batch_size: int | None = None,
    ) -> Result:
        """Top-k columns for each of ``rows``.

        Args:
          rows: one row id or a sequence of n of them (original ids; dense indices with ids="index").
          exclude_seen: leave out each row's history: ``user_items`` when given, else its training entries.
          user_items: fresh histories of these rows (one per row, see the module doc).
          recalculate_user: fold the rows in from ``user_items`` instead of using their trained embeddings.
          filter_items: column ids never recommended; items: the only column ids that may be.
          unknown: "raise", or "skip": unknown rows get an empty (padded) result row.
          batch_size: rows per jitted scoring batch (bounded memory); None: NumPy for a few rows.

        Returns:
          (ids [n, k] original column ids, scores float32 [n, k]), best first, ties lower index first.
        """
        self._check_fitted()
        idx, known = self._index(rows, "row", ids, unknown)
        hist = None if user_items is None else self._history(user_items, len(idx), ids, unknown)
        if recalculate_user:
            if hist is None:
                raise UsageError("recalculate_user=True needs user_items (the rows' fresh histories)")
            query = solve_histories(self.col_embeddings_, hist, self.hparams_, self._gram("column"))
        else:
            query = np.asarray(self.row_embeddings_[np.maximum(idx, 0)], np.float32)
        if not exclude_seen:
            exclude, exclude_rows = None, None
        elif hist is not None:
            exclude, exclude_rows = hist, np.arange(len(idx))
        else:
            exclude, exclude_rows = self.train_, np.maximum(idx, 0)
        mask = self._mask("column", filter_items, items, ids, unknown)
        top, scores = self._topk(query, "column", k, exclude, exclude_rows, mask, batch_size)
        top[~known], scores[~known] = PAD_ID, -np.inf
        return self._out(top, scores, "column", ids)

    def recommend_new(
        self,
        user_items: Any,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        filter_items: Any = None,
        items: Any = None,
        ids: IdSpace = "original",
        unknown: Unknown = "raise",
    ) -> Result:
        """Top-k columns for rows never trained, folded in from ``user_items`` (one history per new
        row; see the module doc); their own items are left out unless ``exclude_seen=False``."""
        self._check_fitted()
        hist = self._history(user_items, None, ids, unknown)
        query = solve_histories(self.col_embeddings_, hist, self.hparams_, self._gram("column"))
        exclude = hist if exclude_seen else None
        rows = np.arange(hist.n_rows) if exclude_seen else None
        top, scores = self._topk(
            query, "column", k, exclude, rows, self._mask("column", filter_items, items, ids, unknown)
        )
        return self._out(top, scores, "column", ids)

    def recommend_all(
        self,
        k: int = 10,
        *,
        batch_size: int = 1024,
        exclude_seen: bool = True,
        filter_items: Any = None,
        items: Any = None,
        ids: IdSpace = "original",
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Top-k for every row, ``batch_size`` rows at a time (memory: one [batch, n_cols] score block).

        Yields:
          (row ids [b], column ids [b, k], scores float32 [b, k]) per batch, in row order.
        """
        self._check_fitted()
        n = self.row_embeddings_.shape[0]
        mask = self._mask("column", filter_items, items, ids, "raise")
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            top, scores = self._topk(
                np.asarray(self.row_embeddings_[idx], np.float32),
                "column",
                k,
                self.train_ if exclude_seen else None,
                idx if exclude_seen else None,
                mask,
                batch_size,
            )
            yield (to_ids(idx, self.row_vocab_, ids),) + self._out(top, scores, "column", ids)

    # ------------------------------------------------------------------ similar
    def _similar(
        self, side: str, query: Any, k: int, filter_ids: Any, only: Any, ids: IdSpace, unknown: Unknown
    ) -> Result:
        self._check_fitted()
        idx, known = self._index(query, side, ids, unknown)
        here = np.maximum(idx, 0)
        unit = self._table(f"unit-{side}")
        own = CSR(
            indptr=np.arange(len(idx) + 1, dtype=np.int64),
            indices=here.astype(np.int32),
            values=np.ones(len(idx), np.float32),
            n_cols=unit.shape[0],
        )  # each query leaves itself out
        top, scores = self._topk(
            unit[here], f"unit-{side}", k, own, np.arange(len(idx)), self._mask(side, filter_ids, only, ids, unknown)
        )
        top[~known], scores[~known] = PAD_ID, -np.inf
        return self._out(top, scores, side, ids)

    def similar_items(
        self,
        query: Any,
        k: int = 10,
        *,
        filter_items: Any = None,
        items: Any = None,
        ids: IdSpace = "original",
        unknown: Unknown = "raise",
    ) -> Result:
        """The k columns most cosine-similar to each of ``query`` (column ids; itself left out);
        ``filter_items`` / ``items`` exclude / restrict the candidates. Returns (ids [n, k], scores [n, k])."""
        return self._similar("column", query, k, filter_items, items, ids, unknown)

    def similar_users(
        self,
        query: Any,
        k: int = 10,
        *,
        filter_users: Any = None,
        users: Any = None,
        ids: IdSpace = "original",
        unknown: Unknown = "raise",
    ) -> Result:
        """The k rows most cosine-similar to each of ``query`` (row ids; itself left out), as
        :meth:`similar_items` over the row table."""
        return self._similar("row", query, k, filter_users, users, ids, unknown)

    # ------------------------------------------------------------------ explain
    def explain(
        self, row: Any, item: Any, *, user_items: Any = None, k: int = 10, ids: IdSpace = "original"
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Why ``item`` scores for ``row``: the fold-in score split over the row's history.

        With the row's system A (training objective) and x = A^-1 sum_j c_j h_j, the score
        h_item . x = sum_j c_j h_item^T A^-1 h_j: one term per history item (implicit's explain).
        The history is ``user_items`` (one row; ``row`` may then be None) or the row's training entries.

        Returns:
          (score, ids [k'] of the history items contributing most, their contributions float64 [k']);
          all contributions sum to the score.
        """
        self._check_fitted()
        if user_items is not None:
            hist = self._history(user_items, 1, ids, "raise")
            cols, conf = hist.row(0)
        else:
            r = self._index(row, "row", ids)[0][0]
            cols, conf = self.train_.row(int(r))
        j = int(self._index(item, "column", ids)[0][0])
        h = self.col_embeddings_
        a, b = row_system(h, self._gram("column"), cols, conf, self.hparams_, h.shape[0])
        target = np.asarray(h[j], np.float64)
        v = np.linalg.solve(a, target)  # A^-1 h_item (A is symmetric)
        contrib = np.asarray(conf, np.float64) * (np.asarray(h[cols], np.float64) @ v)  # [|I_u|]
        order = np.lexsort((cols, -contrib))[:k]
        return float(b @ v), to_ids(np.asarray(cols)[order], self.col_vocab_, ids), contrib[order]

    # ------------------------------------------------------------------ partial fits
    def _grow(self, side: str, given: Any, ids: IdSpace) -> np.ndarray:
        """Dense indices of ``given`` ids on ``side``, appending the new ones (table rows of zeros;
        an index model grows to the largest index + 1)."""
        table, vocab, what = self._side(side)
        idx, known = to_indices(given, vocab, table.shape[0], what, ids=ids, unknown="skip")
        raw = np.asarray(given).reshape(-1)
        if len(np.unique(raw)) != len(raw):
            raise UsageError(f"partial fit: {what} ids repeat; give each once")
        if known.all():
            return idx
        if ids == "index" or vocab is None:
            if raw.dtype.kind not in "iu" or raw.min() < 0:
                raise UsageError(f"new {what} indices must be integers >= 0, got {raw[~known][:5].tolist()}")
            n_new = int(raw.max()) + 1
            idx = raw.astype(np.int64)
            if vocab is not None:  # dense indices past the vocabulary: no original id to give them
                raise UsageError(
                    f"{what} indices {raw[~known][:5].tolist()} are past the vocabulary: give new "
                    "rows by their original ids"
                )
        else:
            fresh = raw[~known]
            vocab = Vocab(np.concatenate([vocab.ids, fresh]))
            idx[~known] = np.arange(table.shape[0], table.shape[0] + len(fresh))
            n_new = len(vocab)
        grown = np.zeros((n_new, table.shape[1]), table.dtype)
        grown[: table.shape[0]] = table
        setattr(self, "row_embeddings_" if side == "row" else "col_embeddings_", grown)
        setattr(self, "row_vocab_" if side == "row" else "col_vocab_", vocab)
        return idx

    def _partial_fit(self, side: str, given: Any, interactions: Any, ids: IdSpace) -> Serving:
        self._check_fitted()
        if getattr(self, "tied", False):
            raise UsageError("partial fits of a tied model (one table for rows and columns) are not supported")
        other = "column" if side == "row" else "row"
        n_given = len(np.asarray(given).reshape(-1))
        hist = self._history(interactions, n_given, ids, "raise", side=other)
        fixed = self._side(other)[0]
        emb = solve_histories(fixed, hist, self.hparams_, self._gram(other))
        idx = self._grow(side, given, ids)
        self._side(side)[0][idx] = emb
        if side == "row":
            self.train_ = replace_rows(self.train_, idx, hist, self.row_embeddings_.shape[0])
        else:  # the seen entries are rows x columns: replace columns through the transpose
            t = self.train_
            tt = sp.csr_matrix((t.values, t.indices, t.indptr), shape=(t.n_rows, t.n_cols)).T.tocsr()
            tt = CSR(
                indptr=tt.indptr.astype(np.int64), indices=tt.indices.astype(np.int32), values=tt.data, n_cols=t.n_rows
            )
            back = replace_rows(tt, idx, hist, self.col_embeddings_.shape[0])
            m = sp.csr_matrix((back.values, back.indices, back.indptr), shape=(back.n_rows, back.n_cols)).T.tocsr()
            self.train_ = CSR(
                indptr=m.indptr.astype(np.int64),
                indices=m.indices.astype(np.int32),
                values=m.data.astype(np.float32),
                n_cols=m.shape[1],
            )
        self.shape_ = (self.row_embeddings_.shape[0], self.col_embeddings_.shape[0])
        self._forget()
        self.engine_ = self.state_ = self.eval_topk_ = None  # they hold the tables before this update
        return self

    def partial_fit_users(self, user_ids: Any, interactions: Any, *, ids: IdSpace = "original") -> Serving:
        """Adds or updates rows in place: each of ``user_ids`` gets the exact fold-in of its row of
        ``interactions`` (its new history, which also replaces its seen entries); new ids extend the
        row vocabulary (an index model grows to the largest index + 1). Returns self."""
        return self._partial_fit("row", user_ids, interactions, ids)

    def partial_fit_items(self, item_ids: Any, interactions: Any, *, ids: IdSpace = "original") -> Serving:
        """As :meth:`partial_fit_users` for columns: ``interactions`` has one row per item over the
        model's rows (scipy.sparse [n, n_rows] or lists of row ids). Returns self."""
        return self._partial_fit("column", item_ids, interactions, ids)
