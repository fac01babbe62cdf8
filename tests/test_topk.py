"""Batched top-k against a float64 NumPy full-sort reference; popularity baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsx.data.matrix import CSR
from alsx.eval.popularity import item_counts, popularity_ranking, popularity_topk
from alsx.serve import topk as topk_mod
from alsx.serve.topk import similar, topk_scores


def _random_csr(rng: np.random.Generator, n_rows: int, n_cols: int, lengths: np.ndarray) -> CSR:
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.concatenate(
        [np.sort(rng.choice(n_cols, size=L, replace=False)) for L in lengths] + [np.zeros(0, int)]
    ).astype(np.int32)
    return CSR(indptr=indptr, indices=indices, values=np.ones(indices.size, np.float32), n_cols=n_cols)


def _reference(query, table, k, exclude=None, exclude_ids=None, exclude_cols=None):
    """Full float64 scores, full sort by (score desc, id asc), -1 / -inf where nothing is left."""
    scores = np.asarray(query, np.float64) @ np.asarray(table, np.float64).T
    n, m = scores.shape
    if exclude is not None:
        rows_of = np.arange(n) if exclude_ids is None else exclude_ids
        for i, r in enumerate(rows_of):
            scores[i, exclude.indices[exclude.indptr[r] : exclude.indptr[r + 1]]] = -np.inf
    if exclude_cols is not None:
        scores[:, exclude_cols] = -np.inf
    out_s = np.full((n, k), -np.inf)
    out_i = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        order = np.lexsort((np.arange(m), -scores[i]))[:k]
        order = order[np.isfinite(scores[i, order])]
        out_s[i, : order.size] = scores[i, order]
        out_i[i, : order.size] = order
    return out_s, out_i


def test_lax_top_k_is_stable_in_index_order():
    # The documented tie-break relies on this: equal values come out lowest index first.
    x = jnp.array([[1.0, 3.0, 3.0, 1.0, 3.0, 2.0, 3.0], [0.0] * 7], dtype=jnp.float32)
    vals, ids = jax.lax.top_k(x, 5)
    np.testing.assert_array_equal(np.asarray(ids), [[1, 2, 4, 6, 5], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(np.asarray(vals)[0], [3, 3, 3, 3, 2])


@pytest.mark.parametrize("m, k", [(1000, 5), (4099, 7), (2048, 16), (90, 3)])
def test_two_stage_top_k_equals_lax_top_k(m, k):
    # Small integers give many equal scores, so the id tie-break is exercised; whole rows and
    # whole chunks of -inf (exclusions) leave fewer than k finite candidates in some rows.
    rng = np.random.default_rng(m)
    scores = rng.integers(-3, 4, size=(12, m)).astype(np.float32)
    scores[0] = -np.inf
    scores[1, : m - 2] = -np.inf  # two finite values, both in the tail or the last chunk
    scores[2, 64:] = -np.inf
    scores[3] = 0.0  # all tied: the k lowest ids
    c = topk_mod.chunk_width(m, k)
    assert c > 0 or m == 90  # the long rows really take the two-stage path; 90 columns do not
    vals, ids = jax.jit(topk_mod.top_k, static_argnums=1)(jnp.asarray(scores), k)
    want_v, want_i = jax.lax.top_k(jnp.asarray(scores), k)
    np.testing.assert_array_equal(np.asarray(vals), np.asarray(want_v))
    finite = np.isfinite(np.asarray(want_v))  # -inf slots: any unused id is as good
    np.testing.assert_array_equal(np.asarray(ids)[finite], np.asarray(want_i)[finite])
    # And against a float64 full sort by (score desc, id asc).
    for r in range(scores.shape[0]):
        order = np.lexsort((np.arange(m), -scores[r].astype(np.float64)))[:k]
        np.testing.assert_array_equal(np.asarray(ids)[r][finite[r]], order[finite[r]])
    np.testing.assert_array_equal(np.asarray(ids)[3], np.arange(k))


@pytest.mark.parametrize("batch_size, m", [(7, 30), (64, 30), (16, 700)])  # 700 columns: two-stage top-k
def test_matches_reference_with_ties_and_exclusions(batch_size, m):
    rng = np.random.default_rng(0)
    n, d, k = 50, 4, 10
    assert (topk_mod.chunk_width(m, k) > 0) == (m == 700)
    # Small integers: float32 dot products are exact, and ties are frequent.
    query = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    table = rng.integers(-2, 3, size=(m, d)).astype(np.float32)
    lengths = rng.integers(0, 8, size=n)
    lengths[:3] = [m - 3, m, 0]  # fewer than k candidates, none at all, no history
    exclude = _random_csr(rng, n, m, lengths)
    scores, ids = topk_scores(query, table, k, exclude=exclude, batch_size=batch_size)
    want_s, want_i = _reference(query, table, k, exclude)
    assert scores.dtype == np.float32 and ids.dtype == np.int32 and ids.shape == (n, k)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_array_equal(scores, want_s.astype(np.float32))
    assert (ids[0, 3:] == -1).all() and (ids[1] == -1).all() and (ids[2] >= 0).all()
    # Ties exist in this data, so the id order really was decided by the tie-break.
    assert (np.diff(scores[3:, :5], axis=1) == 0).any()  # rows 3+ have >= 23 candidates


def test_matches_reference_float_data_and_row_mapping():
    rng = np.random.default_rng(1)
    n_all, n, m, d, k = 40, 25, 60, 8, 12
    query_all = rng.normal(size=(n_all, d)).astype(np.float32)
    table = rng.normal(size=(m, d)).astype(np.float32)
    history = _random_csr(rng, n_all, m, rng.integers(0, 20, size=n_all))
    eval_rows = rng.choice(n_all, size=n, replace=False)
    banned = np.array([3, 17, 42])
    scores, ids = topk_scores(
        query_all[eval_rows], table, k, exclude=history, exclude_ids=eval_rows, batch_size=8, exclude_cols=banned
    )
    want_s, want_i = _reference(query_all[eval_rows], table, k, history, eval_rows, banned)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)
    assert not np.isin(ids, banned).any()


def test_k_larger_than_columns_and_no_exclusions():
    rng = np.random.default_rng(2)
    query = rng.normal(size=(5, 3)).astype(np.float32)
    table = rng.normal(size=(4, 3)).astype(np.float32)
    scores, ids = topk_scores(query, table, 6)
    want_s, want_i = _reference(query, table, 6)
    np.testing.assert_array_equal(ids, want_i)
    assert (ids[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    np.testing.assert_allclose(scores[:, :4], want_s[:, :4], rtol=1e-5)


def test_one_compile_per_history_bucket():
    # Histories of length 5..8 all fall in the width-8 bucket; 3 batches (last padded) -> 1 compile.
    rng = np.random.default_rng(3)
    n, m = 20, 32
    query = rng.normal(size=(n, 4)).astype(np.float32)
    table = rng.normal(size=(m, 4)).astype(np.float32)
    exclude = _random_csr(rng, n, m, rng.integers(5, 9, size=n))
    topk_mod._score_batch.clear_cache()
    topk_scores(query, table, 5, exclude=exclude, batch_size=8)
    assert topk_mod._score_batch._cache_size() == 1
    # A history of 9 needs the width-16 bucket: exactly one more compile.
    longer = _random_csr(rng, n, m, np.full(n, 9))
    topk_scores(query, table, 5, exclude=longer, batch_size=8)
    assert topk_mod._score_batch._cache_size() == 2


def test_exclusion_width_is_a_power_of_two():
    excl = CSR(
        indptr=np.array([0, 3, 3, 8], np.int64),
        indices=np.array([0, 1, 2, 0, 1, 2, 3, 4], np.int32),
        values=np.ones(8, np.float32),
        n_cols=10,
    )
    padded = topk_mod._padded_exclusions(excl, np.array([0, 1, 2]), 10)
    assert padded.shape == (3, 8)  # longest history 5 -> 8
    np.testing.assert_array_equal(padded[0], [0, 1, 2, 10, 10, 10, 10, 10])
    np.testing.assert_array_equal(padded[1], [10] * 8)


def test_bad_arguments():
    q = np.zeros((3, 2), np.float32)
    t = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="share d"):
        topk_scores(q, np.zeros((4, 3), np.float32), 2)
    with pytest.raises(ValueError, match="exclude_ids"):
        topk_scores(q, t, 2, exclude_ids=np.arange(3))
    excl = CSR(np.zeros(6, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), 4)
    with pytest.raises(ValueError, match="exclude has 5 rows"):
        topk_scores(q, t, 2, exclude=excl)


def test_similar_by_cosine():
    rng = np.random.default_rng(4)
    table = rng.normal(size=(30, 5)).astype(np.float32)
    table[7] = 0.0  # zero row: similarity 0, not NaN
    table[12] = 3.0 * table[2]  # same direction as row 2, 3x longer
    ids = np.array([2, 7, 12, 29])
    scores, got = similar(table, ids, k=5)
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-30)
    self_excl = CSR(np.arange(5, dtype=np.int64), ids.astype(np.int32), np.ones(4, np.float32), 30)
    want_s, want_i = _reference(unit[ids], unit, 5, self_excl)
    np.testing.assert_array_equal(got, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
    assert got[0, 0] == 12 and scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert not np.isnan(scores).any()
    assert not (got == ids[:, None]).any()
    # Without exclusion a row is its own best match (row 2 ties with 12; lower id first).
    _, with_self = similar(table, ids, k=1, exclude_self=False)
    assert with_self[0, 0] == 2 and with_self[3, 0] == 29


# --- popularity --------------------------------------------------------------


def _popularity_reference(history: CSR, counts: np.ndarray, k: int) -> np.ndarray:
    order = sorted(range(counts.size), key=lambda c: (-counts[c], c))
    out = np.full((history.n_rows, k), -1, dtype=np.int64)
    for r in range(history.n_rows):
        seen = set(history.row(r)[0].tolist())
        picks = [c for c in order if c not in seen][:k]
        out[r, : len(picks)] = picks
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_popularity_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n, m, k = 60, 25, 8
    counts = rng.integers(0, 6, size=m)  # many equal counts: tie-break by id matters
    lengths = rng.integers(0, 15, size=n)
    lengths[:2] = [m, m - 3]  # nothing left, fewer than k left
    history = _random_csr(rng, n, m, lengths)
    got = popularity_topk(history, counts, k)
    assert got.dtype == np.int32 and got.shape == (n, k)
    np.testing.assert_array_equal(got, _popularity_reference(history, counts, k))
    assert (got[0] == -1).all() and (got[1, 3:] == -1).all()


def test_popularity_counts_and_ranking():
    history = CSR(
        indptr=np.array([0, 2, 5], np.int64),
        indices=np.array([1, 3, 0, 1, 3], np.int32),
        values=np.ones(5, np.float32),
        n_cols=5,
    )
    counts = item_counts(history)
    np.testing.assert_array_equal(counts, [1, 2, 0, 2, 0])
    # Counts 2, 2, 1, 0, 0 -> ids 1, 3 (tie, lower first), 0, then 2, 4.
    np.testing.assert_array_equal(popularity_ranking(counts), [1, 3, 0, 2, 4])
    # Row 0 has seen {1, 3}: next are 0, 2, 4. Row 1 has seen {0, 1, 3}: 2, 4, then nothing.
    np.testing.assert_array_equal(popularity_topk(history, counts, 3), [[0, 2, 4], [2, 4, -1]])


def test_popularity_30k_rows_is_vectorised():
    # 30k rows with long histories; the per-row reference would take seconds, this must not loop.
    rng = np.random.default_rng(5)
    n, m, k = 30_000, 2_000, 50
    lengths = rng.integers(0, 60, size=n)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Row r has seen columns 0..L_r-1: exactly the most popular ones under the counts below.
    indices = (np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)).astype(np.int32)
    history = CSR(indptr, indices, np.ones(indices.size, np.float32), m)
    counts = np.arange(m)[::-1]  # column 0 most popular
    got = popularity_topk(history, counts, k)
    # So its list is L_r, L_r + 1, ..., L_r + k - 1.
    np.testing.assert_array_equal(got, lengths[:, None] + np.arange(k)[None, :])
