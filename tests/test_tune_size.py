"""The size correction of `alsx tune` (alsx.validation.size_corrected): the scans find the peak of
the validation metric in reg_ratio on the carve and on a carve of the carve, and move the best
reg_ratio one more measured step towards the whole input; inside tune() it never reads the test part."""

from __future__ import annotations

import math

import numpy as np
import pytest

import alsx.core.backends as engine_mod
import alsx.tune as tune_mod
import alsx.validation as V
from alsx.config import Packing
from alsx.data.matrix import Interactions
from alsx.data.split import given_split
from alsx.data.synthetic import community_graph


def _keys(x: Interactions) -> set[tuple[int, int]]:
    return set(zip(x.rows.tolist(), x.cols.tolist(), strict=True))


def _csr_keys(csr) -> set[tuple[int, int]]:
    rows = np.repeat(np.arange(csr.n_rows), np.diff(csr.indptr))
    return set(zip(rows.tolist(), np.asarray(csr.indices).tolist(), strict=True))


def _bump(top: float, s0: float = 0.01):
    """A validation metric in reg_ratio s peaking at log2(s / s0) = top (a smooth, concave bump)."""
    return lambda s: 0.3 - 0.01 * (math.log2(s / s0) - top) ** 2


def test_peak_is_the_parabola_vertex_or_the_best_edge():
    f = {x: -((x - 0.3) ** 2) for x in (-0.5, 0.0, 0.5, 1.0)}
    assert V.peak(f) == pytest.approx(0.3)
    assert V.peak({-0.5: 1.0, 0.0: 2.0, 0.5: 3.0}) == 0.5  # best at the edge: the edge
    assert V.peak({-0.5: 1.0, 0.0: 2.0, 0.5: 1.0}) == pytest.approx(0.0)
    assert V.peak({-0.5: 2.0, 0.0: 2.0, 0.5: 2.0}) == 0.0  # flat: the start


def test_scan_walks_to_a_peak_outside_its_first_three_points_and_stops():
    calls: list[float] = []

    def score(x: float) -> float:
        calls.append(x)
        return -((x - 1.2) ** 2)

    scan = V.scan_peak(score)
    assert max(scan) == pytest.approx(1.5)  # walked up until the best point had a neighbour above it
    assert V.peak(scan) == pytest.approx(1.2)
    assert len(calls) == len(set(calls)) == len(scan)  # nothing scored twice
    far = V.scan_peak(lambda x: x)  # rising everywhere: at most MAX_STEPS past the first three
    assert len(far) == 3 + V.MAX_STEPS and max(far) == pytest.approx((1 + V.MAX_STEPS) * V.STEP)


def test_past_the_deadline_the_scans_score_their_three_points_and_stop():
    c = V.size_corrected(0.01, _bump(2.0), _bump(3.0), deadline=0.0)  # long past: no walking
    assert sorted(c.scan_a) == [-V.STEP, 0.0, V.STEP] and len(c.scan_b) == 3 and c.fits == 6
    assert c.peak_a == V.STEP and c.corrected <= 0.01 * 2.0**V.STEP  # the edge, never beyond what was seen


def test_the_deadline_keeps_time_for_the_second_carves_three_fits(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(V.time, "perf_counter", lambda: clock[0])

    def slow(f):  # every fit takes one second of the fake clock
        def g(s: float) -> float:
            clock[0] += 1.0
            return f(s)

        return g

    # A's peak at +1.2 needs walking; 3 fits of A then 3 of B take 6 s: a deadline at 6.5 s allows no walk
    c = V.size_corrected(0.01, slow(_bump(1.2)), slow(_bump(1.2)), deadline=6.5)
    assert len(c.scan_a) == 3 and len(c.scan_b) == 3 and clock[0] == 6.0
    clock[0] = 0.0
    c = V.size_corrected(0.01, slow(_bump(1.2)), slow(_bump(1.2)), deadline=7.5)  # one step of A, then B's 3
    assert len(c.scan_a) == 4 and len(c.scan_b) == 3 and clock[0] <= 7.5


def test_known_scores_are_not_refit_and_nan_counts_as_worst():
    seen: list[float] = []

    def score(s: float) -> float:
        seen.append(s)
        return float("nan") if s > 0.012 else _bump(0.0)(s)

    c = V.size_corrected(0.01, score, _bump(0.0), known_a={0.0: _bump(0.0)(0.01)})
    assert 0.01 not in seen and c.scan_a[V.STEP] == -math.inf
    assert c.fits == len(seen) + len(c.scan_b)


@pytest.mark.parametrize(
    ("top_a", "top_b", "expect"),
    [
        (0.0, 1.0, -1.0),  # B (less data) wants 2x more than A: the whole input 2x less than A
        (0.4, 0.9, -0.1),  # the move measured between the peaks, not on the grid
        (0.0, -1.0, 0.0),  # B wants less than A (noise): no move towards more regularisation
        (0.0, 3.0, -V.MAX_SHIFT),  # a huge move is bounded (and beyond B's scan: its edge)
    ],
)
def test_size_corrected_takes_one_more_measured_step(top_a, top_b, expect):
    c = V.size_corrected(0.01, _bump(top_a), _bump(top_b))
    reach = round(top_a / V.STEP) * V.STEP + (1 + V.MAX_STEPS) * V.STEP  # B's scan starts at A's peak
    assert c.peak_a == pytest.approx(top_a, abs=1e-9) and c.peak_b == pytest.approx(min(top_b, reach), abs=1e-9)
    assert math.log2(c.corrected / 0.01) == pytest.approx(expect, abs=1e-9)
    d = c.as_dict()
    assert d["corrected"] == c.corrected and len(d["scan_a"]) == len(c.scan_a)


@pytest.fixture(scope="module")
def data() -> Interactions:
    x = community_graph(n_nodes=150, n_edges=2500, n_communities=4, seed=3)
    is_test = np.random.default_rng(1).random(x.nnz) < 0.2
    return Interactions(rows=x.rows, cols=x.cols, values=x.values, shape=x.shape, is_test=is_test)


def test_tune_corrects_on_carves_of_the_training_part_only(data, monkeypatch):
    split = given_split(data)
    test, train = _keys(split.test), _keys(split.train)
    seen: list[set] = []
    real = engine_mod.make_engine

    def spy(rows, cols, hp, *a, **kw):
        seen.append(_csr_keys(rows))
        return real(rows, cols, hp, *a, **kw)

    monkeypatch.setattr(engine_mod, "make_engine", spy)
    result = tune_mod.tune(split.train, dim=4, epochs=2, trials=3, progress=False)
    c = result.correction
    carve = tune_mod.validation_split(split.train)
    carve_b = tune_mod.validation_split(carve.train)
    picks = [_keys(tune_mod.validation_split(split.train, seed=s).train) for s in (1, 2)]  # the final pick's carves
    assert seen == [_keys(carve.train), *picks, _keys(carve_b.train)]  # one engine per carve; never the test part
    assert all(not s & test and s <= train for s in seen)
    assert c is not None and result.params["reg_ratio"] == c.corrected
    best = next(t for t in result.trials if t["trial"] == result.best_trial)
    assert c.reg_ratio == best["reg_ratio"] and c.scan_a[0.0] == result.value
    assert c.fits == len(c.scan_a) - 1 + len(c.scan_b)  # the best trial is not refit
    assert c.peak_a - V.MAX_SHIFT - 1e-9 <= math.log2(c.corrected / c.reg_ratio) <= c.peak_a + 1e-9


def test_the_best_trial_refit_scores_what_the_search_scored(data):
    """size_corrected reuses the best trial's value as the carve scan's middle point: a fresh engine
    trained with the same point must score it exactly."""
    split = given_split(data)
    result = tune_mod.tune(split.train, dim=4, epochs=3, trials=3, size_correction=False, progress=False)
    carve = tune_mod.validation_split(split.train)
    best = next(t for t in result.trials if t["trial"] == result.best_trial)
    point = {k: best[k] for k in ("unobserved_ratio", "reg_ratio", "nu", "init_scale", "cg_steps")}
    hp = tune_mod.resolved({"dim": 4, **point}, carve.train.nnz, carve.train.shape, solver="cg")
    engine = engine_mod.make_engine(carve.train.csr(), carve.train.csc(), hp, Packing())
    curve = V.validation_curve(engine, hp, carve, 3, max(1, 3 // tune_mod.EVALUATIONS))
    assert max(v for _, v in curve) == result.value


def test_scored_sample_keeps_the_training_part_and_scores_a_fixed_sample_of_rows(data):
    carve = V.validation_split(given_split(data).train)
    rows = np.unique(carve.test.rows)
    assert V.scored_sample(carve, None) is carve and V.scored_sample(carve, rows.size) is carve
    a, b = V.scored_sample(carve, 20, seed=1), V.scored_sample(carve, 20, seed=1)
    kept = np.unique(a.test.rows)
    assert a.train is carve.train and kept.size == 20 and set(kept) <= set(rows)
    assert np.array_equal(kept, np.unique(b.test.rows))  # seeded
    assert _keys(a.test) == {k for k in _keys(carve.test) if k[0] in set(kept.tolist())}  # whole rows kept
    assert not np.array_equal(kept, np.unique(V.scored_sample(carve, 20, seed=2).test.rows))


def test_every_evaluation_of_a_search_scores_the_same_sample(data, monkeypatch):
    """The search and both carves of the size correction score eval_rows rows each, the same ones per carve,
    while training on the whole carve."""
    split = given_split(data)
    carve = V.validation_split(split.train)
    carve_b = V.validation_split(carve.train)
    scored: dict[frozenset, set] = {}
    real = V.validation_metric

    def spy(w, h, val, *a, **kw):
        scored.setdefault(frozenset(_keys(val.train)), set()).add(frozenset(np.unique(val.test.rows).tolist()))
        return real(w, h, val, *a, **kw)

    monkeypatch.setattr(V, "validation_metric", spy)
    result = tune_mod.tune(split.train, dim=4, epochs=2, trials=3, eval_rows=25, progress=False)
    assert set(scored) == {frozenset(_keys(carve.train)), frozenset(_keys(carve_b.train))}
    for c in (carve, carve_b):
        (rows,) = scored[frozenset(_keys(c.train))]  # one sample per carve
        assert len(rows) == 25 and rows <= set(np.unique(c.test.rows).tolist())
    assert result.scored_rows == (25, np.unique(carve.test.rows).size)


def test_the_final_pick_is_the_best_mean_over_carves_of_the_top_trials(data, monkeypatch):
    """The best PICK_TRIALS trials are re-scored on carves of other seeds of the training part; the trial with
    the best mean curve wins, at that curve's best epoch."""
    split = given_split(data)
    curves: dict[tuple[int, frozenset], list] = {}
    real = V.validation_curve

    def spy(engine, hp, val, *a, **kw):
        out = real(engine, hp, val, *a, **kw)
        curves[(round(hp.reg, 12), frozenset(_keys(val.train)))] = out
        return out

    monkeypatch.setattr(tune_mod, "validation_curve", spy)
    result = tune_mod.tune(split.train, dim=4, epochs=3, trials=6, size_correction=False, pruner="none", progress=False)
    done = sorted((t for t in result.trials if t["state"] == "complete"), key=lambda t: -t["recall@20"])
    assert sorted(result.top) == sorted(t["trial"] for t in done[: tune_mod.PICK_TRIALS])
    assert result.best_trial == max(result.top, key=result.top.get)
    carves = [tune_mod.validation_split(split.train, seed=s) for s in (0, 1, 2)]
    for t in done[: tune_mod.PICK_TRIALS]:
        point = {"dim": 4, **{k: t[k] for k in tune_mod.TUNED}}
        regs = [round(tune_mod.resolved(point, c.train.nnz, c.train.shape).reg, 12) for c in carves]
        per_carve = [curves[(r, frozenset(_keys(c.train)))] for r, c in zip(regs, carves, strict=True)]
        mean = V.mean_curve(per_carve)
        assert result.top[t["trial"]] == pytest.approx(max(v for _, v in mean))
        if t["trial"] == result.best_trial:
            assert result.params["epochs"] == max(mean, key=lambda ev: ev[1])[0]


def test_mean_curve_averages_the_epochs_every_curve_has():
    assert V.mean_curve([[(1, 0.2), (2, 0.4)], [(1, 0.4), (2, 0.0), (3, 1.0)]]) == [(1, pytest.approx(0.3)), (2, 0.2)]
