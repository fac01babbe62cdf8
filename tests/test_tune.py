"""`alsx tune`, `alsx train --config` and `--early-stopping`: the search sees only the training input,
writes what it says, and early stopping keeps the best epoch's tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import alsx.tune as tune_mod
import alsx.validation as validation_mod
from alsx import cli
from alsx.cli.guard import check_args
from alsx.cli.train_options import apply_config
from alsx.config import DEFAULTS
from alsx.data.matrix import Interactions
from alsx.data.split import given_split
from alsx.data.synthetic import community_graph
from alsx.errors import UsageError
from alsx.model import ALS
from alsx.tune import EarlyStopping, dims_up_to, parse_metric, validation_metric, validation_split

SRC = Path(__file__).resolve().parents[1] / "src"


def _keys(x: Interactions) -> set[tuple[int, int]]:
    return set(zip(x.rows.tolist(), x.cols.tolist(), strict=True))


def _csr_keys(csr) -> set[tuple[int, int]]:
    rows = np.repeat(np.arange(csr.n_rows), np.diff(csr.indptr))
    return set(zip(rows.tolist(), np.asarray(csr.indices).tolist(), strict=True))


@pytest.fixture(scope="module")
def data() -> Interactions:
    """A small graph with a given split (every 5th entry of each row's order is a test entry)."""
    x = community_graph(n_nodes=150, n_edges=2500, n_communities=4, seed=3)
    is_test = np.random.default_rng(1).random(x.nnz) < 0.2
    return Interactions(rows=x.rows, cols=x.cols, values=x.values, shape=x.shape, is_test=is_test)


@pytest.fixture(scope="module")
def data_file(data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "g.npz"
    np.savez(path, rows=data.rows, cols=data.cols, shape=np.array(data.shape), is_test=data.is_test)
    return path


def _alsx(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _main(argv: list[str]) -> int:
    """`alsx ARGV` in this process (with --config applied as main() does), errors as exceptions."""
    parser = cli.build_parser()
    args = apply_config(parser, parser.parse_args(argv), argv)
    check_args(args)
    return int(args.func(args) or 0)


# ------------------------------------------------------------------ the validation carve
def test_validation_split_partitions_the_training_part_only(data):
    split = given_split(data)
    val = validation_split(split.train, fraction=0.25, seed=4)
    train, held, test = _keys(val.train), _keys(val.test), _keys(split.test)
    assert train | held == _keys(split.train) and not train & held
    assert not (train | held) & test  # no test entry on either side
    lengths = np.bincount(split.train.rows, minlength=data.shape[0])
    n_held = np.bincount(val.test.rows, minlength=data.shape[0])
    assert np.all(n_held[lengths >= 2] >= 1) and np.all(n_held[lengths < 2] == 0)
    assert np.array_equal(
        n_held[lengths >= 2], np.clip(np.floor(0.25 * lengths[lengths >= 2] + 0.5), 1, lengths[lengths >= 2] - 1)
    )
    assert _keys(validation_split(split.train, 0.25, seed=4).test) == held  # seeded


def test_metric_names_and_dims():
    assert parse_metric("ndcg@10") == 10
    for bad in ("recall", "recall@0", "precision@20", "recall@x"):
        with pytest.raises(ValueError, match="recall@20"):
            parse_metric(bad)
    assert dims_up_to(64, 300) == (64, 128, 256) and dims_up_to(64, None) == (64,)


def test_tune_trains_and_scores_only_the_training_part(data, monkeypatch):
    split = given_split(data)
    test = _keys(split.test)
    seen: list[set] = []
    make_engine = tune_mod.__dict__.get("make_engine")
    assert make_engine is None  # imported inside tune(): patch it where it lives
    import alsx.core.backends as engine_mod

    real = engine_mod.make_engine

    def spy(rows, cols, hp, *a, **kw):
        seen.append(_csr_keys(rows))
        return real(rows, cols, hp, *a, **kw)

    scored: list[set] = []
    real_metric = tune_mod.validation_metric

    def spy_metric(w, h, val, *a, **kw):
        scored.append(_keys(val.test) | _keys(val.train))
        return real_metric(w, h, val, *a, **kw)

    monkeypatch.setattr(engine_mod, "make_engine", spy)
    monkeypatch.setattr(validation_mod, "validation_metric", spy_metric)
    result = tune_mod.tune(split.train, dim=4, epochs=2, trials=2, size_correction=False, pick_carves=0, progress=False)
    assert seen and scored
    assert all(not s & test for s in seen) and all(not s & test for s in scored)
    assert all(s == _keys(split.train) for s in scored)
    assert len(seen) == 1  # one engine for both trials (same dim): set_hparams swapped the rest
    carve = tune_mod.validation_split(split.train).train
    first = result.trials[0]  # trial 0: the defaults, alpha0 and reg resolved on the validation carve
    assert (first["unobserved_ratio"], first["reg_ratio"]) == (DEFAULTS["unobserved_ratio"], DEFAULTS["reg_ratio"])
    density = carve.nnz / (carve.shape[0] * carve.shape[1])
    assert first["unobserved_weight"] == pytest.approx(DEFAULTS["unobserved_ratio"] * density)
    assert first["reg"] == pytest.approx(DEFAULTS["reg_ratio"] * first["unobserved_weight"])
    assert result.value == max(r["recall@20"] for r in result.trials if r["state"] == "complete")
    top = next(r for r in result.trials if r["trial"] == result.best_trial)
    assert result.params["reg"] == result.params["unobserved_weight"] == "auto"  # the ratios travel, not alpha0
    hp = ALS(**result.params, progress=False).checked_hparams(carve)
    assert (hp.reg, hp.unobserved_weight) == pytest.approx((top["reg"], top["unobserved_weight"]))


def test_set_hparams_swaps_the_objective_and_refuses_a_new_shape(data):
    """CpuEngine: an epoch after the swap equals a fresh engine's; LocalEngine (a JIT compile per
    shape is slow here): its objective after the swap equals a fresh engine's."""
    from alsx.config import HParams
    from alsx.core.cpu import CpuEngine
    from alsx.core.engine import LocalEngine

    x = given_split(data).train
    rows, cols = x.csr(), x.csc()
    a = HParams(dim=4, reg=0.003)
    b = HParams(dim=4, reg=0.05, unobserved_weight=0.2, nu=0.5, cg_steps=2, init_scale=0.3)
    swapped, fresh = CpuEngine(rows, cols, a), CpuEngine(rows, cols, b)
    swapped.set_hparams(b)
    w1, h1 = swapped.to_numpy(swapped.epoch(swapped.init_state(0)))
    w2, h2 = fresh.to_numpy(fresh.epoch(fresh.init_state(0)))
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)
    plain = CpuEngine(rows, cols, a)
    assert not np.allclose(w1, plain.to_numpy(plain.epoch(plain.init_state(0)))[0], atol=1e-3)  # it did swap
    local, local_b = LocalEngine(rows, cols, a), LocalEngine(rows, cols, b)
    st = local.init_state(0)
    before = local.loss(st)
    local.set_hparams(b)
    assert local.loss(st) == local_b.loss(st) and local.loss(st).total != before.total
    for engine in (swapped, local):
        with pytest.raises(ValueError, match="dim 4 -> 8"):
            engine.set_hparams(HParams(dim=8))
        with pytest.raises(ValueError, match="solver"):
            engine.set_hparams(HParams(dim=4, solver="cholesky"))


# ------------------------------------------------------------------ alsx tune, as a user runs it
def test_alsx_tune_writes_trials_best_config_plots_and_the_refit_model(data, data_file, tmp_path):
    out = tmp_path / "tuned"
    res = _alsx(
        *("tune", str(data_file), "--out", str(out), "--dim", "4", "--epochs", "3", "--trials", "3"),
        *("--split", "given", "--pruner", "none"),  # 3 complete trials for the final pick
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"the {given_split(data).test.nnz} test entries are not read" in res.stderr.replace(",", "")
    best = json.loads((out / "best.json").read_text())
    import pandas as pd

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 3 and set(trials["state"]) <= {"complete", "pruned", "fail"}
    searched = {"unobserved_ratio", "reg_ratio", "reg", "unobserved_weight", "nu", "init_scale", "cg_steps"}
    assert searched | {"seconds", "recall@20"} <= set(trials)
    top = trials.set_index("trial").loc[best["about"]["trial"]]  # the final pick among the best trials
    picked = {int(n): v for n, v in best["about"]["top trials, mean over carves"].items()}
    done = trials[trials["state"] == "complete"].sort_values("recall@20", ascending=False)
    assert set(picked) == set(done["trial"][: tune_mod.PICK_TRIALS]) and max(picked, key=picked.get) == top.name
    assert f"of the best {len(picked)} trials, {top.name} has the best mean" in res.stderr
    assert best["unobserved_ratio"] == pytest.approx(top["unobserved_ratio"]) and best["epochs"] == top["best_epoch"]
    assert best["reg"] == best["unobserved_weight"] == "auto"
    assert best["about"]["validation recall@20"] == pytest.approx(top["recall@20"])
    n_val = np.unique(validation_split(given_split(data).train).test.rows).size  # fewer than --eval-rows: all
    assert best["about"]["validation rows scored"] == [n_val, n_val]
    corr = best["about"]["size correction"]  # the refit's reg_ratio is the corrected one, said on stderr
    assert corr["reg_ratio"] == pytest.approx(top["reg_ratio"]) and best["reg_ratio"] == corr["corrected"]
    assert f"{corr['corrected']:.4g} for all {train_nnz(data)}" in res.stderr.replace(",", "")
    assert (out / "tune.png").stat().st_size > 0
    cfg = json.loads((out / "config.json").read_text())
    for k in ("dim", "nu", "init_scale", "cg_steps"):
        assert cfg["hparams"][k] == pytest.approx(best[k])
    # the refit on all of the training part: alpha0 = the best ratio x its density, reg = the ratio x alpha0
    train = given_split(data).train
    alpha0 = best["unobserved_ratio"] * train.nnz / (train.shape[0] * train.shape[1])
    assert cfg["hparams"]["unobserved_weight"] == pytest.approx(alpha0, rel=1e-6)
    assert cfg["hparams"]["reg"] == pytest.approx(best["reg_ratio"] * alpha0, rel=1e-6)
    assert cfg["epochs"] == best["epochs"] and cfg["trained_on"]["part"] == "all input"
    assert np.load(out / "row_embeddings.npy").shape == (data.shape[0], 4)
    assert "model" in json.loads((out / "metrics.json").read_text())  # scored on the given test part

    again = tmp_path / "again"  # best.json is a --config of alsx train
    assert (
        _main(["train", str(data_file), "--out", str(again), "--config", str(out / "best.json"), "--split", "none"])
        == 0
    )
    cfg2 = json.loads((again / "config.json").read_text())
    weights = ("reg", "unobserved_weight")
    assert {k: v for k, v in cfg2["hparams"].items() if k not in weights} == {
        k: v for k, v in cfg["hparams"].items() if k not in weights
    }
    assert cfg2["epochs"] == cfg["epochs"]
    everything = best["unobserved_ratio"] * data.nnz / (data.shape[0] * data.shape[1])  # --split none: all input
    assert cfg2["hparams"]["unobserved_weight"] == pytest.approx(everything, rel=1e-6)
    assert cfg2["hparams"]["reg"] == pytest.approx(best["reg_ratio"] * everything, rel=1e-6)


def train_nnz(data: Interactions) -> int:
    return given_split(data).train.nnz


def test_alsx_tune_without_size_correction_keeps_the_carves_best(data_file, tmp_path):
    out = tmp_path / "plain"
    argv = ["tune", str(data_file), "--out", str(out), "--dim", "4", "--epochs", "2", "--trials", "2"]
    res = _alsx(*argv, "--split", "given", "--no-size-correction", "--no-refit")
    assert res.returncode == 0, res.stderr[-3000:]
    best = json.loads((out / "best.json").read_text())
    import pandas as pd

    trials = pd.read_parquet(out / "trials.parquet")
    top = trials.set_index("trial").loc[best["about"]["trial"]]
    assert best["reg_ratio"] == pytest.approx(top["reg_ratio"]) and "size correction" not in best["about"]
    assert "for all" not in res.stderr


# ------------------------------------------------------------------ alsx train --config
def test_config_values_apply_and_explicit_flags_win(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"reg": 0.5, "dim": 12, "cg_steps": 5, "about": {"tool": "me"}}))
    parser = cli.build_parser()
    argv = ["train", "x.npz", "--out", "o", "--config", str(path), "--dim", "128", "--cg-steps", "4"]
    a = apply_config(parser, parser.parse_args(argv), argv)
    assert (a.reg, a.dim, a.cg_steps) == (0.5, 128, 4)  # --dim 128 is the default value, given explicitly


def test_config_unknown_keys_are_a_usage_error_naming_them(tmp_path, data_file):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"reg": 0.5, "regularization": 1, "lr": 2}))
    parser = cli.build_parser()
    argv = ["train", "x.npz", "--out", "o", "--config", str(path)]
    with pytest.raises(UsageError, match="unknown keys lr, regularization"):
        apply_config(parser, parser.parse_args(argv), argv)
    res = _alsx("train", str(data_file), "--out", str(tmp_path / "o"), "--config", str(path))
    assert res.returncode == 2 and "unknown keys lr, regularization" in res.stderr
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="JSON object"):
        apply_config(parser, parser.parse_args(argv), argv)


# ------------------------------------------------------------------ early stopping
def test_early_stopping_keeps_the_best_epochs_tables(data, data_file, tmp_path, monkeypatch):
    """The validation metric (scripted: it peaks at epoch 2) stops training after 2 evaluations
    without improvement; the saved tables are epoch 2's, and the refit on all input runs 2 epochs."""
    script = iter([0.1, 0.3, 0.2, 0.15, 0.1, 0.05])
    calls: list[int] = []

    def scripted(w, h, val, hp, metric, alpha):
        calls.append(len(calls))
        return next(script)

    monkeypatch.setattr(validation_mod, "validation_metric", scripted)
    flags = ["--dim", "4", "--epochs", "6", "--reg", "0.05", "--split", "given", "--backend", "cpu"]
    out = tmp_path / "es"
    assert _main(["train", str(data_file), "--out", str(out), "--early-stopping", "2", "--no-refit", *flags]) == 0
    assert len(calls) == 4  # epochs 1-4: epoch 2 best, 3 and 4 worse
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["stopped"]["kept_epoch"] == 2
    val = validation_split(given_split(data).train, 0.2, seed=0)  # what --early-stopping carved
    two = ALS(dim=4, epochs=2, reg=0.05, progress=False, backend="cpu").fit(val.train)
    np.testing.assert_allclose(np.load(out / "col_embeddings.npy"), two.col_embeddings_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "row_embeddings.npy"), two.row_embeddings_, rtol=1e-5, atol=1e-6)

    script = iter([0.1, 0.3, 0.2, 0.15])
    refit = tmp_path / "refit"
    assert _main(["train", str(data_file), "--out", str(refit), "--early-stopping", "2", *flags]) == 0
    cfg = json.loads((refit / "config.json").read_text())
    assert cfg["epochs"] == 2 and len(json.loads((refit / "history.json").read_text())) == 2


def test_early_stopping_at_the_last_epoch_still_keeps_the_best(data, monkeypatch):
    val = validation_split(given_split(data).train, 0.2, seed=0)
    values = iter([0.2, 0.5, 0.4])
    monkeypatch.setattr(validation_mod, "validation_metric", lambda *a: next(values))
    model = ALS(dim=4, epochs=3, reg=0.05, progress=False, backend="cpu")
    stop = EarlyStopping(model, val, patience=5)
    kept = {}

    def callback(record, st):
        kept[st.epoch] = tuple(np.array(t) for t in model.engine_.to_numpy(st))
        stop(record, st)

    model.fit(val.train, callback=callback)
    assert sorted(kept) == [1, 2, 3]  # ran every epoch (patience not exhausted) ...
    np.testing.assert_array_equal(model.row_embeddings_, kept[2][0])  # ... and kept epoch 2's tables
    np.testing.assert_array_equal(model.col_embeddings_, kept[2][1])
    assert model.history_[-1]["stopped"]["kept_epoch"] == 2 and stop.best_epoch == 2


def test_validation_metric_is_the_evaluation_protocols(data):
    from alsx.eval.protocol import evaluate

    val = validation_split(given_split(data).train, 0.2, seed=0)
    model = ALS(dim=4, epochs=2, reg=0.05, progress=False).fit(val.train)
    w, h = model.row_embeddings_, model.col_embeddings_
    want = evaluate(w, h, val, model.hparams, (10,), baseline=False)["model"]["ndcg@10"]
    assert validation_metric(w, h, val, model.hparams, "ndcg@10") == want and 0 < want < 1
    assert np.isnan(validation_metric(np.full_like(w, np.nan), h, val, model.hparams))
