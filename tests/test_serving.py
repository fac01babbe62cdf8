"""The estimator's serving API as a user calls it, in the user's ids (issue 18 section 1).

One small model with string ids is fitted once; every number is checked against a float64
NumPy reference (``tests/reference.py``): fold-in is the exact row update of the training
objective (training lambda, nu, alpha0 and confidence alpha), scores are dot products.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import alsx.serve.estimator as serving
from alsx import ALS
from alsx.data.matrix import CSR
from alsx.serve.ids import UnknownIdError
from alsx.serve.topk import topk_numpy, topk_scores
from reference import solve_rows

N_USERS, N_ITEMS, ALPHA = 80, 50, 2.0
HP = dict(dim=8, epochs=3, reg=0.05, unobserved_weight=0.1, nu=1.0, alpha=ALPHA, progress=False)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    u, i = rng.integers(0, N_USERS, 900), rng.integers(0, N_ITEMS, 900)
    df = pd.DataFrame(
        {
            "item": [f"m{x}" for x in i],
            "when": np.arange(900),
            "user": [f"u{x}" for x in u],
            "plays": rng.integers(1, 4, 900).astype(float),
        }
    )
    return df.drop_duplicates(["user", "item"])


@pytest.fixture(scope="module")
def model(frame) -> ALS:
    return ALS(**HP).fit(frame, row="user", col="item", value="plays")


def _fresh(m: ALS) -> ALS:
    """A copy to change in place (partial fits) without touching the shared fixture."""
    import pickle

    return pickle.loads(pickle.dumps(m))


def _col(m: ALS, ids) -> np.ndarray:
    return m.col_vocab_.encode(np.asarray(ids))


def _reference_topk(w: np.ndarray, h: np.ndarray, k: int, excluded: list[set[int]]) -> np.ndarray:
    """[n, k] dense ids of the float64 top-k (ties: lower index first)."""
    scores = np.asarray(w, np.float64) @ np.asarray(h, np.float64).T
    out = []
    for r, ex in enumerate(excluded):
        s = scores[r].copy()
        s[list(ex)] = -np.inf
        out.append(np.lexsort((np.arange(len(s)), -s))[:k])
    return np.array(out)


# ------------------------------------------------------------------ original ids in and out
def test_recommend_and_similar_speak_original_ids(model, frame):
    ids, scores = model.recommend(["u12", "u7"], k=5)
    assert ids.shape == (2, 5) and ids.dtype.kind == "U" and all(s.startswith("m") for s in ids.ravel())
    seen = set(frame.loc[frame.user == "u12", "item"])
    assert not seen & set(ids[0]) and np.all(np.diff(scores, axis=1) <= 0)
    u = model.row_vocab_.encode(["u12"])[0]
    ref = _reference_topk(model.row_embeddings_[[u]], model.col_embeddings_, 5, [set(_col(model, list(seen)))])
    assert ids[0].tolist() == model.col_vocab_.decode(ref[0]).tolist()
    np.testing.assert_allclose(scores[0], model.row_embeddings_[u] @ model.col_embeddings_[ref[0]].T, rtol=1e-5)
    sim, _ = model.similar_items(["m49"], k=3)
    assert sim.shape == (1, 3) and "m49" not in sim[0] and all(s.startswith("m") for s in sim[0])


def test_dense_indices_on_request(model):
    u = model.row_vocab_.encode(["u12", "u7"])
    by_id, s1 = model.recommend(["u12", "u7"], k=4)
    by_index, s2 = model.recommend(u, k=4, ids="index")
    assert by_index.dtype.kind == "i" and model.col_vocab_.decode(by_index).tolist() == by_id.tolist()
    np.testing.assert_array_equal(s1, s2)


def test_unknown_ids_one_error_naming_them_or_skipped(model):
    with pytest.raises(UnknownIdError, match=r"2 row id\(s\) not in the model: 'nobody', 'ghost'"):
        model.recommend(["u12", "nobody", "ghost"])
    with pytest.raises(KeyError):  # also a KeyError, as a dict lookup would be
        model.similar_items(["m999"])
    ids, scores = model.recommend(["u12", "nobody"], k=3, unknown="skip")
    assert ids[1].tolist() == ["", "", ""] and np.all(np.isneginf(scores[1]))
    assert ids[0].tolist() == model.recommend(["u12"], k=3)[0][0].tolist()
    with pytest.raises(UnknownIdError, match="indices 0..79"):
        model.recommend([80], ids="index")


# ------------------------------------------------------------------ fold-in
def _conf(m: ALS, rows: list[dict[str, float]]) -> np.ndarray:
    """Dense float64 confidences [n, n_items] of {item id: value} histories (0 = unobserved)."""
    conf = np.zeros((len(rows), m.col_embeddings_.shape[0]))
    for r, hist in enumerate(rows):
        for item, v in hist.items():
            conf[r, _col(m, [item])[0]] = 1.0 + ALPHA * v
    return conf


def test_recommend_new_is_the_exact_fold_in(model):
    hists = [{"m1": 1.0, "m2": 1.0, "m30": 1.0}, {"m7": 1.0}]
    ids, scores = model.recommend_new([list(h) for h in hists], k=6)
    w = solve_rows(_conf(model, hists), model.col_embeddings_, 0.05, 0.1, 1.0)
    ref = _reference_topk(w, model.col_embeddings_, 6, [set(_col(model, list(h))) for h in hists])
    assert ids.tolist() == model.col_vocab_.decode(ref).tolist()  # given items excluded
    np.testing.assert_allclose(scores, np.take_along_axis(w @ model.col_embeddings_.T, ref, 1), rtol=1e-4, atol=1e-6)
    # scipy.sparse over the model's columns, values as fit reads them (confidence 1 + alpha * value)
    vals = {"m1": 3.0, "m2": 1.0}
    x = sp.csr_matrix((list(vals.values()), ([0, 0], _col(model, list(vals)))), shape=(1, N_ITEMS))
    ids2, scores2 = model.recommend_new(x, k=6)
    w2 = solve_rows(_conf(model, [vals]), model.col_embeddings_, 0.05, 0.1, 1.0)
    np.testing.assert_allclose(
        scores2[0],
        np.sort(np.delete(w2 @ model.col_embeddings_.T, _col(model, list(vals)), axis=1)[0])[::-1][:6],
        rtol=1e-4,
        atol=1e-6,
    )


def test_recalculate_user_folds_known_rows_in_from_fresh_history(model):
    hist = {"m3": 2.0, "m4": 1.0, "m5": 1.0}
    x = sp.csr_matrix((list(hist.values()), ([0] * 3, _col(model, list(hist)))), shape=(1, N_ITEMS))
    ids, scores = model.recommend(["u12"], k=5, user_items=x, recalculate_user=True)
    w = solve_rows(_conf(model, [hist]), model.col_embeddings_, 0.05, 0.1, 1.0)
    ref = _reference_topk(w, model.col_embeddings_, 5, [set(_col(model, list(hist)))])
    assert ids[0].tolist() == model.col_vocab_.decode(ref[0]).tolist()
    np.testing.assert_allclose(scores[0], (w @ model.col_embeddings_.T)[0, ref[0]], rtol=1e-4, atol=1e-6)
    # user_items without recalculate_user: the trained row, the fresh history excluded
    kept, _ = model.recommend(["u12"], k=N_ITEMS, user_items=x)
    assert not set(hist) & set(kept[0]) and "" in kept[0]


def test_partial_fit_users_adds_and_updates_rows_in_place(model, tmp_path):
    m = _fresh(model)
    n0 = m.row_embeddings_.shape[0]
    m.partial_fit_users(["newbie", "u3"], [["m1", "m2"], ["m40"]])
    assert m.row_embeddings_.shape[0] == n0 + 1 and m.row_vocab_.decode([n0]).tolist() == ["newbie"]
    w = solve_rows(_conf(m, [{"m1": 1.0, "m2": 1.0}, {"m40": 1.0}]), m.col_embeddings_, 0.05, 0.1, 1.0)
    got = m.row_embeddings_[m.row_vocab_.encode(["newbie", "u3"])]
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-6)
    ids, _ = m.recommend(["newbie", "u3"], k=N_ITEMS - 2)
    assert {"m1", "m2"}.isdisjoint(ids[0]) and "m40" not in ids[1]  # the new histories are the seen items
    np.testing.assert_array_equal(m.recommend(["u12"], k=5)[0], model.recommend(["u12"], k=5)[0])  # others kept
    back = ALS.load(m.save(tmp_path / "grown"))  # the grown vocabulary and seen entries save and load
    np.testing.assert_array_equal(back.recommend(["newbie", "u3"], k=N_ITEMS - 2)[0], ids)


def test_partial_fit_items_adds_a_column(model):
    m = _fresh(model)
    users = ["u1", "u2", "u9"]
    m.partial_fit_items(
        ["m-new"], sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 0], m.row_vocab_.encode(users))), shape=(1, N_USERS))
    )
    conf = np.zeros((1, N_USERS))
    conf[0, m.row_vocab_.encode(users)] = 1.0 + ALPHA
    h = solve_rows(conf, model.row_embeddings_, 0.05, 0.1, 1.0)
    np.testing.assert_allclose(m.col_embeddings_[-1], h[0], rtol=1e-4, atol=1e-6)
    assert m.col_vocab_.decode([N_ITEMS]).tolist() == ["m-new"]
    assert "m-new" not in m.recommend(["u1"], k=N_ITEMS + 1)[0][0]  # now seen by u1
    assert m.similar_items(["m-new"], k=3)[0].shape == (1, 3)


# ------------------------------------------------------------------ candidates, similar users, all rows, explain
def test_filter_items_and_items_restrict_the_candidates(model):
    banned = ["m0", "m1", "m2", "m3", "m4"]
    ids, _ = model.recommend(["u12"], k=N_ITEMS, filter_items=banned)
    assert not set(banned) & set(ids[0])
    allowed = ["m10", "m11", "m12", "m13"]
    only, scores = model.recommend(["u5"], k=3, items=allowed)
    u = model.row_vocab_.encode(["u5"])[0]
    seen = set(model.train_.row(int(u))[0].tolist())
    cand = [c for c in _col(model, allowed) if c not in seen]
    s = model.row_embeddings_[u] @ model.col_embeddings_[cand].T
    assert only[0][: min(3, len(cand))].tolist() == model.col_vocab_.decode(np.array(cand)[np.argsort(-s)[:3]]).tolist()
    sim, _ = model.similar_items(["m5"], k=2, items=allowed)
    assert set(sim[0]) <= set(allowed)


def test_similar_users_is_cosine_over_the_row_table(model):
    ids, scores = model.similar_users(["u4"], k=4)
    w = model.row_embeddings_.astype(np.float64)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    q = model.row_vocab_.encode(["u4"])[0]
    cos = unit @ unit[q]
    cos[q] = -np.inf
    ref = np.argsort(-cos)[:4]
    assert ids[0].tolist() == model.row_vocab_.decode(ref).tolist()
    np.testing.assert_allclose(scores[0], cos[ref], rtol=1e-5)


def test_recommend_all_streams_every_row_in_bounded_batches(model):
    batches = list(model.recommend_all(k=4, batch_size=32))
    assert [len(b[0]) for b in batches] == [32, 32, N_USERS - 64]
    rows = np.concatenate([b[0] for b in batches])
    assert rows.tolist() == model.row_vocab_.ids.tolist()
    every = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(every, model.recommend(rows, k=4)[0])


def test_explain_splits_the_fold_in_score_over_the_history(model):
    score, ids, parts = model.explain("u12", "m20", k=100)
    u = model.row_vocab_.encode(["u12"])[0]
    cols, conf = model.train_.row(int(u))
    dense = np.zeros((1, N_ITEMS))
    dense[0, cols] = conf
    w = solve_rows(dense, model.col_embeddings_, 0.05, 0.1, 1.0)
    assert score == pytest.approx(float(w[0] @ model.col_embeddings_[_col(model, ["m20"])[0]]), rel=1e-6)
    assert parts.sum() == pytest.approx(score, rel=1e-9, abs=1e-12)
    assert set(ids.tolist()) == set(model.col_vocab_.decode(cols).tolist()) and np.all(np.diff(parts) <= 0)


# ------------------------------------------------------------------ latency path
def test_numpy_top_k_equals_the_jitted_one_ties_and_exclusions_included():
    rng = np.random.default_rng(0)
    q = rng.integers(-2, 3, (5, 4)).astype(np.float32)  # small integers: many exactly equal scores
    t = rng.integers(-2, 3, (60, 4)).astype(np.float32)
    hist = sp.random(5, 60, density=0.2, random_state=2, format="csr")
    csr = CSR(
        indptr=hist.indptr.astype(np.int64),
        indices=hist.indices.astype(np.int32),
        values=hist.data.astype(np.float32),
        n_cols=60,
    )
    mask = np.zeros(60, np.float32)
    mask[[3, 7, 11]] = -np.inf
    for k in (1, 7, 60, 70):
        s1, i1 = topk_numpy(q, t, k, [csr.row(r)[0] for r in range(5)], mask)
        s2, i2 = topk_scores(q, t, k, exclude=csr, exclude_cols=np.array([3, 7, 11]))
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def test_single_rows_take_the_numpy_path(model, monkeypatch):
    """One-row calls compile nothing: they never reach the jitted scorer (benchmarks/latency.py times them)."""

    def jitted(*a, **k):
        raise AssertionError("single-row recommend reached the jitted path")

    monkeypatch.setattr(serving, "topk_scores", jitted)
    ids, _ = model.recommend(["u12"], k=5)
    assert ids.shape == (1, 5)
    with pytest.raises(AssertionError):
        model.recommend(["u12"], k=5, batch_size=8)  # an explicit batch size takes the batched path


def test_a_saved_model_serves_the_same_ids_after_load(model, tmp_path):
    back = ALS.load(model.save(tmp_path / "m"))
    for a, b in zip(back.recommend(["u12", "u7"], k=5), model.recommend(["u12", "u7"], k=5), strict=True):
        np.testing.assert_array_equal(a, b)
    new = [["m1", "m2"]]
    np.testing.assert_array_equal(back.recommend_new(new, k=4)[0], model.recommend_new(new, k=4)[0])
