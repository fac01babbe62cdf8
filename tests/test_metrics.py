"""Ranking metrics: hand-computed cases and a slow per-row Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alsx.data.matrix import CSR
from alsx.eval.metrics import hit_rate_at_k, map_at_k, ndcg_at_k, ranking_metrics, recall_at_k, relevance


def _csr(sets: list[list[int]], n_cols: int = 100) -> CSR:
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(s) for s in sets])
    indices = np.array([c for s in sets for c in sorted(s)], dtype=np.int32)
    return CSR(indptr=indptr, indices=indices, values=np.ones(indices.size, np.float32), n_cols=n_cols)


# Hand example. Ranks are 0-based, discount 1/log2(rank + 2).
#   row 0: topk [3, 1, 7, 5], truth {1, 5, 9}: hits at ranks 1 and 3.
#   row 1: topk [2, -1, -1, -1], truth {2}: hit at rank 0, padding after.
#   row 2: topk [4, 6, 8, 0], truth {}: excluded from every mean.
#   row 3: topk [0, 1, 2, 3], truth {10..15}: no hit.
#   row 4: topk [1, 2, 3, 4], truth {1..8}: four hits, |G| = 8 > k.
TOPK = np.array([[3, 1, 7, 5], [2, -1, -1, -1], [4, 6, 8, 0], [0, 1, 2, 3], [1, 2, 3, 4]], dtype=np.int32)
TRUTH = _csr([[1, 5, 9], [2], [], list(range(10, 16)), list(range(1, 9))])
L3, L5 = math.log2(3), math.log2(5)


def test_hand_example_at_4():
    # recall (min): row0 2/min(4,3)=2/3, row1 1, row3 0, row4 4/4=1 -> (2/3+1+0+1)/4 = 2/3
    assert recall_at_k(TOPK, TRUTH, 4) == pytest.approx(2 / 3)
    # recall (|G|): row0 2/3, row1 1, row3 0, row4 4/8 -> (2/3+1+0+1/2)/4 = 13/24
    assert recall_at_k(TOPK, TRUTH, 4, denominator="truth") == pytest.approx(13 / 24)
    # ndcg: row0 (1/log2 3 + 1/log2 5) / (1 + 1/log2 3 + 1/log2 4); rows 1 and 4 perfect; row3 0.
    row0 = (1 / L3 + 1 / L5) / (1 + 1 / L3 + 1 / 2)
    assert ndcg_at_k(TOPK, TRUTH, 4) == pytest.approx((row0 + 1 + 0 + 1) / 4)
    # hit rate: rows 0, 1, 4 hit, row 3 does not -> 3/4
    assert hit_rate_at_k(TOPK, TRUTH, 4) == pytest.approx(3 / 4)
    # AP: row0 (1/2 + 2/4)/min(4,3) = 1/3, row1 1, row3 0, row4 (1+1+1+1)/4 = 1 -> (7/3)/4 = 7/12
    assert map_at_k(TOPK, TRUTH, 4) == pytest.approx(7 / 12)


def test_hand_example_ranking_metrics_at_2_and_4():
    m = ranking_metrics(TOPK, TRUTH, ks=(2, 4))
    assert m["n_eval_rows"] == 4  # row 2 has no ground truth
    # k=2: row0 topk [3, 1] -> one hit at rank 1.
    #   recall: row0 1/min(2,3)=1/2, row1 1/1, row3 0, row4 2/2 -> 2.5/4 = 0.625
    assert m["recall@2"] == pytest.approx(0.625)
    #   recall_gt: row0 1/3, row1 1, row3 0, row4 2/8 -> (19/12)/4 = 19/48
    assert m["recall_gt@2"] == pytest.approx(19 / 48)
    #   ndcg: row0 (1/log2 3) / (1 + 1/log2 3), rows 1, 4 perfect
    assert m["ndcg@2"] == pytest.approx(((1 / L3) / (1 + 1 / L3) + 2) / 4)
    assert m["hr@2"] == pytest.approx(3 / 4)
    #   AP: row0 (1/2)/2 = 1/4, row1 1, row3 0, row4 (1+1)/2 = 1 -> 2.25/4
    assert m["map@2"] == pytest.approx(0.5625)
    assert m["recall@4"] == pytest.approx(2 / 3)
    assert m["map@4"] == pytest.approx(7 / 12)
    assert set(m) == {f"{name}@{k}" for name in ("recall", "recall_gt", "ndcg", "hr", "map") for k in (2, 4)} | {
        "n_eval_rows"
    }


def test_truth_as_tuple_matches_csr():
    a = ranking_metrics(TOPK, TRUTH, ks=(1, 3))
    b = ranking_metrics(TOPK, (TRUTH.indptr, TRUTH.indices), ks=(1, 3))
    assert a == b


def test_padding_never_hits_even_when_keys_could_alias():
    # Combined keys are row * stride + id with stride = max id + 1 = 6 here, so a -1 in
    # row 1 has key 5, the key of (row 0, id 5). It must not count as a hit.
    topk = np.array([[0, 1], [-1, -1]], dtype=np.int32)
    truth = _csr([[5], [0]])
    rel, n_truth = relevance(topk, truth)
    assert not rel.any()
    np.testing.assert_array_equal(n_truth, [1, 1])
    assert hit_rate_at_k(topk, truth, 2) == 0.0


def test_no_ground_truth_gives_nan_and_zero_rows():
    m = ranking_metrics(np.zeros((3, 5), np.int32), _csr([[], [], []]), ks=(5,))
    assert m["n_eval_rows"] == 0
    assert math.isnan(m["recall@5"]) and math.isnan(m["ndcg@5"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(TOPK, TRUTH, 5)  # wider than the top-k
    with pytest.raises(ValueError, match="denominator"):
        recall_at_k(TOPK, TRUTH, 2, denominator="max")
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(TOPK[:3], TRUTH, 2)


def _reference(topk: np.ndarray, sets: list[set[int]], k: int) -> dict[str, float]:
    """Straightforward per-row definitions in plain Python."""
    sums = dict(recall=0.0, recall_gt=0.0, ndcg=0.0, hr=0.0, map=0.0)
    n = 0
    for ids, gt in zip(topk.tolist(), sets):
        if not gt:
            continue
        n += 1
        ids = ids[:k]
        hits = [1 if (i >= 0 and i in gt) else 0 for i in ids]
        denom = min(k, len(gt))
        sums["recall"] += sum(hits) / denom
        sums["recall_gt"] += sum(hits) / len(gt)
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(denom))
        sums["ndcg"] += dcg / idcg
        sums["hr"] += 1.0 if any(hits) else 0.0
        ap, seen = 0.0, 0
        for r, h in enumerate(hits):
            if h:
                seen += 1
                ap += seen / (r + 1)
        sums["map"] += ap / denom
    out = {f"{name}@{k}": v / n for name, v in sums.items()}
    out["n_eval_rows"] = n
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_python_reference_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n, n_cols, K = 200, 40, 30
    sets = []
    for _ in range(n):
        size = rng.choice([0, 1, 3, 10, 35]) if rng.random() < 0.9 else 0
        sets.append(set(rng.choice(n_cols, size=size, replace=False).tolist()))
    topk = np.stack([rng.permutation(n_cols)[:K] for _ in range(n)]).astype(np.int32)
    # Random -1 tails, as when a row has fewer than K candidates.
    cut = rng.integers(0, K + 1, size=n)
    topk[np.arange(K)[None, :] >= cut[:, None]] = -1
    # Unsorted truth indices must also work through the tuple form.
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    indices = np.concatenate([rng.permutation(sorted(s)) for s in sets if s]).astype(np.int32)
    ks = (1, 5, 20, 30)
    got = ranking_metrics(topk, (indptr, indices), ks=ks)
    for k in ks:
        want = _reference(topk, sets, k)
        assert got["n_eval_rows"] == want["n_eval_rows"]
        for key in ("recall", "recall_gt", "ndcg", "hr", "map"):
            assert got[f"{key}@{k}"] == pytest.approx(want[f"{key}@{k}"], rel=1e-12), (key, k)
    # The single-metric functions agree with the dict.
    assert recall_at_k(topk, (indptr, indices), 20) == pytest.approx(got["recall@20"])
    assert ndcg_at_k(topk, (indptr, indices), 5) == pytest.approx(got["ndcg@5"])
    assert map_at_k(topk, (indptr, indices), 30) == pytest.approx(got["map@30"])
    assert hit_rate_at_k(topk, (indptr, indices), 1) == pytest.approx(got["hr@1"])
