"""The one training path (alsx.train), the engine contract's shared pieces, and the single source of
defaults; plus ``alsx train DATASET_FOLDER`` honouring the model flags (--init, --backend) as given."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alsx.callbacks import StopTraining
from alsx.config import DEFAULTS, HParams, resolve_weights
from alsx.core.cpu import CpuEngine
from alsx.core.engine import Engine, LocalEngine, alternate
from alsx.data.matrix import coo_to_csr
from alsx.model import ALS
from alsx.train import run

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def small(n_rows=30, n_cols=20, seed=0):
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, n_rows, 200), rng.integers(0, n_cols, 200)
    keep = np.unique(r * n_cols + c)
    r, c = keep // n_cols, keep % n_cols
    ones = np.ones(len(r), np.float32)
    return coo_to_csr(r, c, ones, n_rows, n_cols), coo_to_csr(c, r, ones, n_cols, n_rows)


def test_alternate_is_the_tied_and_untied_epoch():
    calls = []

    def half(x, other, side):
        calls.append((side, x, other))
        return x + 1, other * 10

    # rows: w 1 -> 2 against h 2 (handed back as 20); cols: h 20 -> 21 against w 2 (handed back as 20)
    assert alternate(half, 1, 2, tied=False) == (20, 21)
    assert calls == [("rows", 1, 2), ("cols", 20, 2)]
    calls.clear()
    assert alternate(half, 1, 1, tied=True) == (3, 3)  # one table solved twice
    assert calls == [("rows", 1, 1), ("cols", 2, 2)]


def test_every_engine_implements_the_contract():
    from alsx.core.sharded import ShardedEngine
    from alsx.core.streaming import StreamingEngine

    for cls in (LocalEngine, StreamingEngine, ShardedEngine, CpuEngine):
        assert issubclass(cls, Engine) and not inspect.isabstract(cls), cls
        assert cls.kind in ("local", "streaming", "sharded", "cpu")


def test_run_records_history_and_a_stop_keeps_the_tables_it_carries():
    rows, cols = small()
    eng = LocalEngine(rows, cols, HParams(dim=4))
    kept = (np.full((30, 4), 7.0, np.float32), np.zeros((20, 4), np.float32))

    def stop_at_two(record, state):
        if record["epoch"] == 2:
            raise StopTraining("enough", tables=kept, epoch=1)

    res = run(eng, 5, seed=0, callbacks=[stop_at_two], loss_every=2, progress=False)
    assert [r["epoch"] for r in res.history] == [1, 2] and res.state.epoch == 2
    assert "check_seconds" in res.history[0] and "loss" in res.history[1]  # loss every 2nd epoch
    assert res.stopped == "enough" and res.history[-1]["stopped"]["reason"] == "enough"
    assert res.tables is kept and res.tables_epoch == 1
    import scipy.sparse as sp

    model = ALS(dim=4, epochs=5, progress=False, engine_factory=lambda r, c, hp, p, t: LocalEngine(r, c, hp, p, t))
    model.fit(sp.csr_matrix((rows.values, rows.indices, rows.indptr), shape=(30, 20)), callback=stop_at_two)
    assert np.array_equal(model.row_embeddings_, kept[0]) and len(model.history_) == 2


def test_set_hparams_swaps_what_needs_no_repacking():
    rows, cols = small()
    eng = LocalEngine(rows, cols, HParams(dim=4, reg=0.1))
    st = eng.init_state(0)
    before = eng.loss(st).regularisation
    eng.set_hparams(HParams(dim=4, reg=0.2))
    assert eng.loss(st).regularisation == pytest.approx(2 * before, rel=1e-5)  # lambda scales with reg
    with pytest.raises(ValueError, match="dim"):
        eng.set_hparams(HParams(dim=8, reg=0.2))


def test_defaults_live_in_config_only():
    from alsx.cli import build_parser

    sig = inspect.signature(ALS.__init__).parameters
    for name in (
        "dim",
        "reg",
        "unobserved_weight",
        "nu",
        "solver",
        "cg_steps",
        "block_size",
        "epochs",
        "dtype",
        "init_scale",
        "init",
        "seed",
        "loss_every",
        "backend",
        "unobserved_ratio",
        "reg_ratio",
    ):
        assert sig[name].default == DEFAULTS[name], name
    a = build_parser().parse_args(["train", "x", "--out", "y"])
    for f in dataclasses.fields(HParams):  # the CLI's defaults: HParams' own, but reg and alpha0 'auto'
        assert (
            getattr(a, f.name)
            == DEFAULTS[f.name]
            == (f.default if f.name not in ("reg", "unobserved_weight") else "auto")
        )
    assert (a.unobserved_ratio, a.reg_ratio) == (DEFAULTS["unobserved_ratio"], DEFAULTS["reg_ratio"])
    assert (a.epochs, a.seed, a.loss_every, a.backend) == tuple(
        DEFAULTS[k] for k in ("epochs", "seed", "loss_every", "backend")
    )
    with pytest.raises(AttributeError):
        HParams.from_args(argparse.Namespace(dim=4))  # every field is read by name: nothing silently defaulted


def test_alsx_train_dataset_folder_uses_init_and_backend(tmp_path):
    """``alsx train DATASET --init uniform --backend cpu``: the CPU engine, from a uniform start."""
    from alsx.webgraph.synthetic import synth_webgraph

    ds = synth_webgraph(tmp_path / "wg", 300, 3000, seed=2, heldout_fraction=0.2)
    out = tmp_path / "m"
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    args = [
        "train",
        str(ds.path),
        "--out",
        str(out),
        "--dim",
        "8",
        "--epochs",
        "2",
        "--init",
        "uniform",
        "--init-scale",
        "0.2",
        "--backend",
        "cpu",
        "--seed",
        "3",
        "--max-eval-rows",
        "20",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "alsx.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["engine"] == "cpu" and "(cpu)" in res.stdout
    assert cfg["hparams"]["init"] == "uniform" and cfg["hparams"]["init_scale"] == 0.2
    got = np.load(out / "col_embeddings.npy")

    train = ds.train_csr()  # the default 'auto' weights: the ratios x the dataset's density
    reg, alpha0 = resolve_weights("auto", "auto", train.nnz, (train.n_rows, train.n_cols))
    assert (cfg["hparams"]["reg"], cfg["hparams"]["unobserved_weight"]) == pytest.approx((reg, alpha0))

    def tables(init: str) -> np.ndarray:
        hp = HParams(dim=8, init=init, init_scale=0.2, reg=reg, unobserved_weight=alpha0)
        eng = CpuEngine(ds.train_csr(), ds.train_csc(), hp)
        return eng.to_numpy(run(eng, 2, seed=3, progress=False).state)[1]

    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    assert rel(got, tables("uniform")) < 1e-4  # float32 rounding (a cached vs a fresh Numba kernel)
    assert rel(got, tables("normal")) > 1e-2  # the start matters after 2 epochs: --init was not ignored
