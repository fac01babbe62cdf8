"""'auto' alpha0 and reg: derived from the training matrix's density, the same way on every path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from alsx import ALS
from alsx.config import AUTO, DEFAULTS, REG_RATIO, UNOBSERVED_RATIO, resolve_weights

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_weights_follows_the_density_and_the_given_values():
    reg, a0 = resolve_weights(AUTO, AUTO, 500, (100, 50))
    assert a0 == pytest.approx(UNOBSERVED_RATIO * 500 / 5000) and reg == pytest.approx(REG_RATIO * a0)
    # an explicit alpha0 is kept and an 'auto' reg follows it; an explicit reg is kept
    assert resolve_weights(AUTO, 0.2, 500, (100, 50)) == pytest.approx((REG_RATIO * 0.2, 0.2))
    assert resolve_weights(0.5, AUTO, 500, (100, 50)) == pytest.approx((0.5, a0))
    assert resolve_weights(AUTO, AUTO, 500, (100, 50), 2.0, 0.5) == pytest.approx((0.1, 0.2))  # density 0.1
    with pytest.raises(ValueError, match="reg must be a number or 'auto', got 'big'"):
        resolve_weights("big", AUTO, 1, (1, 1))
    with pytest.raises(ValueError, match="unobserved_ratio must be > 0"):
        resolve_weights(AUTO, AUTO, 1, (1, 1), 0.0)


def test_fit_resolves_auto_on_its_training_matrix():
    """Twice the density, twice alpha0 and reg; ALS keeps 'auto' (scikit-learn: parameters as given)."""
    rng = np.random.default_rng(0)

    def matrix(nnz: int):
        keys = rng.choice(120 * 80, nnz, replace=False)
        return sp.csr_matrix((np.ones(nnz, np.float32), (keys // 80, keys % 80)), shape=(120, 80))

    sparse, dense = (ALS(dim=4, epochs=1, progress=False).fit(matrix(n)) for n in (480, 960))
    assert sparse.reg == sparse.unobserved_weight == AUTO == DEFAULTS["reg"] == DEFAULTS["unobserved_weight"]
    assert sparse.hparams_.unobserved_weight == pytest.approx(UNOBSERVED_RATIO * 480 / (120 * 80))
    assert dense.hparams_.unobserved_weight == pytest.approx(2 * sparse.hparams_.unobserved_weight)
    assert dense.hparams_.reg == pytest.approx(REG_RATIO * dense.hparams_.unobserved_weight)
    with pytest.raises(ValueError, match="reg must be a number or 'auto'"):
        ALS(reg="lots", progress=False).fit(matrix(100))


def _alsx(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_alsx_train_says_and_saves_the_weights_auto_chose(tmp_path):
    rows, cols = np.divmod(np.random.default_rng(1).choice(60 * 40, 300, replace=False), 40)
    data = tmp_path / "x.csv"
    data.write_text("".join(f"{r},{c}\n" for r, c in zip(rows, cols, strict=True)))
    res = _alsx("train", str(data), "--out", str(tmp_path / "m"), "--dim", "4", "--epochs", "2", "--split", "none")
    assert res.returncode == 0, res.stderr
    hp = json.loads((tmp_path / "m" / "config.json").read_text())["hparams"]
    n_rows, n_cols = len(np.unique(rows)), len(np.unique(cols))  # ids are mapped: only those that occur
    assert hp["unobserved_weight"] == pytest.approx(UNOBSERVED_RATIO * 300 / (n_rows * n_cols), rel=1e-6)
    assert hp["reg"] == pytest.approx(REG_RATIO * hp["unobserved_weight"], rel=1e-6)
    assert f"--unobserved-weight {hp['unobserved_weight']:.3g}" in res.stdout and "from 'auto'" in res.stdout
    # a bad value, on the command line or in a --config file: one line naming the flag, before any training
    bad = _alsx("train", str(data), "--out", str(tmp_path / "b"), "--reg", "strong")
    assert bad.returncode == 2 and "--reg takes a number or 'auto', got 'strong'" in bad.stderr
    assert "Traceback" not in bad.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"unobserved_weight": "lots"}))
    bad = _alsx("train", str(data), "--out", str(tmp_path / "b"), "--config", str(cfg))
    assert bad.returncode == 2 and "--unobserved-weight takes a number or 'auto', got 'lots'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b" / "config.json").exists()


def test_readme_states_the_ratios_config_holds():
    text = (ROOT / "README.md").read_text()
    assert f"(`--unobserved-ratio`, r = {UNOBSERVED_RATIO:g})" in text
    assert f"(`--reg-ratio`, s = {REG_RATIO:g})" in text
