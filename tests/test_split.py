"""Invariants of the seeded splits: a partition of the input, per-row rules, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from alsx.data.matrix import Interactions
from alsx.data.split import Split, given_split, heldout_rows_split, leave_last_out, random_holdout


def _random_interactions(seed: int = 0, n_rows: int = 300, n_cols: int = 80) -> Interactions:
    """Rows of length 0..40 (several of length 0, 1 and 2), unique pairs, with timestamps."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 41, size=n_rows)
    lengths[:6] = [0, 1, 1, 2, 2, 3]
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.concatenate([rng.choice(n_cols, size=L, replace=False) for L in lengths])
    # Few distinct timestamps so leave_last_out meets ties.
    ts = rng.integers(0, 5, size=rows.size).astype(np.int64)
    # Shuffle entries so nothing relies on input order.
    p = rng.permutation(rows.size)
    return Interactions(
        rows=rows[p].astype(np.int32),
        cols=cols[p].astype(np.int32),
        values=rng.random(rows.size).astype(np.float32) + 1.0,
        shape=(n_rows, n_cols),
        timestamps=ts[p],
        is_test=rng.random(rows.size)[p] < 0.3,
    )


def _triples(x: Interactions) -> set[tuple[int, int, float]]:
    return set(zip(x.rows.tolist(), x.cols.tolist(), x.values.tolist()))


def _parts(s: Split) -> list[Interactions]:
    return [s.train, s.test] + ([] if s.foldin is None else [s.foldin])


def _assert_partition(x: Interactions, s: Split) -> None:
    parts = _parts(s)
    sets = [_triples(p) for p in parts]
    assert sum(len(t) for t in sets) == x.nnz  # disjoint, given the union below
    assert set().union(*sets) == _triples(x)
    for p in parts:
        assert p.shape == x.shape
        assert p.rows.dtype == np.int32 and p.cols.dtype == np.int32
        # timestamps travel with their entries
        got = dict(zip(zip(p.rows.tolist(), p.cols.tolist()), p.timestamps.tolist()))
        want = dict(zip(zip(x.rows.tolist(), x.cols.tolist()), x.timestamps.tolist()))
        assert all(want[key] == t for key, t in got.items())
    summ = s.summary()
    assert summ["nnz"] == x.nnz
    assert summ["n_train"] + summ["n_test"] + summ["n_foldin"] == x.nnz
    assert summ["n_train"] == s.train.nnz and summ["n_test"] == s.test.nnz
    assert summ["n_test_rows"] == np.unique(s.test.rows).size


def _lengths(x: Interactions) -> np.ndarray:
    return np.bincount(x.rows, minlength=x.shape[0])


def _same(a: Split, b: Split) -> bool:
    return all(_triples(p) == _triples(q) for p, q in zip(_parts(a), _parts(b)))


# --- random_holdout ---------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_random_holdout_partition_and_row_counts(fraction):
    x = _random_interactions()
    s = random_holdout(x, fraction=fraction, min_row_length=3, seed=1)
    _assert_partition(x, s)
    full, tr, te = _lengths(x), _lengths(s.train), _lengths(s.test)
    want = np.clip(np.floor(fraction * full + 0.5), 1, np.maximum(full - 1, 1))
    want = np.where(full >= 3, want, 0)
    np.testing.assert_array_equal(te, want)
    # Rows long enough keep at least one training entry and give at least one test entry.
    long = full >= 3
    assert (tr[long] >= 1).all() and (te[long] >= 1).all()
    # Short rows (1 or 2 entries here) stay whole in train.
    short = (full > 0) & (full < 3)
    np.testing.assert_array_equal(tr[short], full[short])
    assert s.summary()["n_short_rows"] == int(short.sum()) > 0
    assert s.kind == "random_holdout" and s.foldin is None and s.heldout_rows is None


def test_random_holdout_rounding_by_hand():
    # fraction 0.25: row of 10 -> 2.5 rounds half up to 3; row of 2 -> 0.5 -> 1;
    #   row of 3 -> 0.75 -> 1.
    # fraction 0.9: row of 10 -> 9; row of 2 -> 1.8 -> 2, capped at 2 - 1 = 1;
    #   row of 3 -> 2.7 -> 3, capped at 3 - 1 = 2.
    rows = np.repeat(np.array([0, 1, 2], dtype=np.int32), [10, 2, 3])
    cols = np.concatenate([np.arange(10), np.arange(2), np.arange(3)]).astype(np.int32)
    x = Interactions(rows=rows, cols=cols, values=np.ones(15, np.float32), shape=(3, 10))
    np.testing.assert_array_equal(_lengths(random_holdout(x, 0.25).test), [3, 1, 1])
    np.testing.assert_array_equal(_lengths(random_holdout(x, 0.9).test), [9, 1, 2])


def test_random_holdout_seed_determinism():
    x = _random_interactions()
    a, b = random_holdout(x, seed=7), random_holdout(x, seed=7)
    assert _same(a, b)
    np.testing.assert_array_equal(a.test.rows, b.test.rows)
    np.testing.assert_array_equal(a.test.cols, b.test.cols)
    assert not _same(a, random_holdout(x, seed=8))


def test_min_row_length_must_allow_a_split():
    x = _random_interactions()
    with pytest.raises(ValueError, match="min_row_length"):
        random_holdout(x, min_row_length=1)
    with pytest.raises(ValueError, match="fraction"):
        random_holdout(x, fraction=1.0)


# --- heldout_rows_split -----------------------------------------------------


def test_heldout_rows_partition_and_rows_never_trained():
    x = _random_interactions(seed=3)
    s = heldout_rows_split(x, row_fraction=0.2, history_fraction=0.7, min_row_length=4, seed=5)
    _assert_partition(x, s)
    held = s.heldout_rows
    assert held.dtype == np.int32 and (np.diff(held) > 0).all()
    full = _lengths(x)
    eligible = np.flatnonzero(full >= 4)
    assert np.isin(held, eligible).all()
    assert held.size == int(np.floor(0.2 * eligible.size + 0.5))
    # Held-out rows never appear in train; test and fold-in contain only held-out rows.
    assert not np.isin(s.train.rows, held).any()
    assert np.isin(s.test.rows, held).all() and np.isin(s.foldin.rows, held).all()
    # Every other row is entirely in train.
    others = np.setdiff1d(np.arange(x.shape[0]), held)
    np.testing.assert_array_equal(_lengths(s.train)[others], full[others])
    # Each held-out row: history round(0.7 L) clipped to [1, L-1], the rest ground truth.
    hist, gt = _lengths(s.foldin)[held], _lengths(s.test)[held]
    L = full[held]
    np.testing.assert_array_equal(hist, np.clip(np.floor(0.7 * L + 0.5), 1, L - 1))
    np.testing.assert_array_equal(hist + gt, L)
    assert (gt >= 1).all()
    summ = s.summary()
    assert summ["n_heldout_rows"] == held.size == summ["n_test_rows"]
    assert summ["n_foldin"] == s.foldin.nnz > 0
    assert s.kind == "heldout_rows"


def test_heldout_rows_seed_determinism():
    x = _random_interactions(seed=3)
    a, b = heldout_rows_split(x, seed=1), heldout_rows_split(x, seed=1)
    assert _same(a, b)
    np.testing.assert_array_equal(a.heldout_rows, b.heldout_rows)
    c = heldout_rows_split(x, seed=2)
    assert not np.array_equal(a.heldout_rows, c.heldout_rows)


# --- leave_last_out ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_leave_last_out_takes_latest(n):
    x = _random_interactions(seed=4)
    s = leave_last_out(x, n=n, seed=0)
    _assert_partition(x, s)
    full, te = _lengths(x), _lengths(s.test)
    np.testing.assert_array_equal(te, np.where(full > n, n, 0))
    assert s.summary()["n_short_rows"] == int(((full > 0) & (full <= n)).sum())
    # No test entry is older than a training entry of the same row.
    last_train = np.full(x.shape[0], -1, dtype=np.int64)
    np.maximum.at(last_train, s.train.rows, s.train.timestamps)
    first_test = np.full(x.shape[0], 10**9, dtype=np.int64)
    np.minimum.at(first_test, s.test.rows, s.test.timestamps)
    assert (first_test[full > n] >= last_train[full > n]).all()


def test_leave_last_out_ties_broken_by_seed():
    # One row, 8 entries with the same timestamp: which one is "last" depends on the seed only.
    x = Interactions(
        rows=np.zeros(8, np.int32),
        cols=np.arange(8, dtype=np.int32),
        values=np.ones(8, np.float32),
        shape=(1, 8),
        timestamps=np.zeros(8, np.int64),
    )
    picks = [int(leave_last_out(x, n=1, seed=s).test.cols[0]) for s in range(12)]
    assert picks == [int(leave_last_out(x, n=1, seed=s).test.cols[0]) for s in range(12)]
    assert len(set(picks)) > 1


def test_leave_last_out_by_hand():
    # Row 0: timestamps 5, 1, 9, 3 -> last two are cols 2 (t=9) and 0 (t=5).
    # Row 1: two entries, n=2 -> row stays in train.
    x = Interactions(
        rows=np.array([0, 0, 0, 0, 1, 1], np.int32),
        cols=np.array([0, 1, 2, 3, 0, 1], np.int32),
        values=np.ones(6, np.float32),
        shape=(2, 4),
        timestamps=np.array([5, 1, 9, 3, 7, 8], np.int64),
    )
    s = leave_last_out(x, n=2)
    assert sorted(s.test.cols.tolist()) == [0, 2] and set(s.test.rows.tolist()) == {0}
    assert s.summary()["n_short_rows"] == 1


def test_leave_last_out_needs_timestamps():
    x = _random_interactions()
    bare = Interactions(x.rows, x.cols, x.values, x.shape)
    with pytest.raises(ValueError, match="timestamps"):
        leave_last_out(bare)


# --- given_split ------------------------------------------------------------


def test_given_split_follows_flags():
    x = _random_interactions(seed=6)
    s = given_split(x)
    _assert_partition(x, s)
    assert s.test.nnz == int(x.is_test.sum())
    assert s.test.is_test.all() and not s.train.is_test.any()
    assert s.kind == "given"


def test_given_split_needs_flags():
    x = _random_interactions()
    bare = Interactions(x.rows, x.cols, x.values, x.shape)
    with pytest.raises(ValueError, match="is_test"):
        given_split(bare)
