"""Sharded top-k equals the single-device top-k (and a NumPy full sort), ties and exclusions included.

Runs on the devices this process has (8 emulated CPU devices under CI; one otherwise).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from alsx.core.sharding import balanced_layout, make_mesh
from alsx.data.matrix import coo_to_csr
from alsx.serve.sharded_topk import ShardedTable, sharded_topk
from alsx.serve.topk import topk_scores


def _reference(query, table, k, excluded):
    """float64 scores, full sort by (score desc, id asc); -inf / -1 when nothing is left."""
    scores = np.asarray(query, np.float64) @ np.asarray(table, np.float64).T
    scores[excluded] = -np.inf
    ids = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    top = np.take_along_axis(scores, ids, axis=1)
    ids = np.where(np.isneginf(top), -1, ids)
    pad = k - ids.shape[1]
    return np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf), np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)


def _case(seed, n, m, d, integer):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: many exact ties
        q = rng.integers(-2, 3, (n, d)).astype(np.float32)
        t = rng.integers(-2, 3, (m, d)).astype(np.float32)
    else:
        q = rng.normal(size=(n, d)).astype(np.float32)
        t = rng.normal(size=(m, d)).astype(np.float32)
        t[5] = t[2]  # duplicated rows tie exactly
    excluded = rng.random((n, m)) < 0.3
    excluded[0] = True  # a row with everything excluded
    r, c = np.nonzero(excluded)
    return q, t, excluded, coo_to_csr(r, c, np.ones(len(r), np.float32), n, m)


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("k", [1, 4, 29, 35])
def test_sharded_equals_single_device(integer, k):
    q, t, excluded, exclude = _case(0, 37, 29, 4, integer)
    single = topk_scores(q, t, k, exclude=exclude, batch_size=16)
    sharded = sharded_topk(q, t, k, exclude=exclude, batch_size=16)
    ref = _reference(q, t, k, excluded)
    assert np.array_equal(sharded[1], single[1])
    assert np.array_equal(sharded[1], ref[1])
    np.testing.assert_allclose(sharded[0], ref[0], rtol=1e-5, atol=1e-5)
    if integer:
        assert np.array_equal(sharded[0], single[0])


def test_balanced_layout_and_global_exclusions():
    """Rows permuted over shards (as the engine stores them) give the same answer."""
    q, t, excluded, exclude = _case(1, 20, 53, 6, integer=True)
    mesh = make_mesh()
    layout = balanced_layout(np.random.default_rng(2).random(53), len(jax.devices()))
    table = ShardedTable.from_layout(t, layout, mesh)
    drop = np.array([0, 7, 52])
    ids_rows = np.arange(20)[::-1].copy()  # query i uses exclusion row 19 - i
    got = sharded_topk(q, table, 10, exclude=exclude, exclude_ids=ids_rows, exclude_cols=drop, batch_size=8)
    want = topk_scores(q, t, 10, exclude=exclude, exclude_ids=ids_rows, exclude_cols=drop, batch_size=8)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    assert not np.isin(got[1], drop).any()


def test_table_from_engine_state():
    from alsx.config import HParams
    from alsx.core.sharded import ShardedEngine

    rng = np.random.default_rng(3)
    dense = rng.random((30, 25)) < 0.3
    r, c = np.nonzero(dense)
    v = np.ones(len(r), np.float32)
    rows, cols = coo_to_csr(r, c, v, 30, 25), coo_to_csr(c, r, v, 25, 30)
    eng = ShardedEngine(rows, cols, HParams(dim=4, solver="cholesky"))
    state = eng.epoch(eng.init_state(0))
    w, h = eng.to_numpy(state)
    got = sharded_topk(w, ShardedTable.from_engine(eng, state), 5, exclude=rows)
    want = topk_scores(w, h, 5, exclude=rows)
    assert np.array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_bad_arguments():
    q, t, _, exclude = _case(0, 5, 7, 3, integer=True)
    with pytest.raises(ValueError, match="'k' parameter"):
        sharded_topk(q, t, 0)
    with pytest.raises(ValueError, match="share d"):
        sharded_topk(q[:, :2], t, 3)
    with pytest.raises(ValueError, match="without exclude"):
        sharded_topk(q, t, 3, exclude_ids=np.arange(5))
