"""Memory planner: scaling, budget errors with advice, and the engine's pre-flight check."""

from __future__ import annotations

import numpy as np
import pytest

from alsx.config import HParams, Packing
from alsx.core.sharded import ShardedEngine
from alsx.data.matrix import coo_to_csr
from alsx.plan import MemoryPlanError, check, device_budget, estimate, plan_engine

GiB = 1 << 30


def test_tables_shrink_with_devices_and_bf16():
    hp = HParams(dim=128)
    one = estimate(10**7, 10**6, 10**9, hp, n_devices=1)
    eight = estimate(10**7, 10**6, 10**9, hp, n_devices=8)
    assert eight.components["tables"] * 8 == pytest.approx(one.components["tables"], rel=1e-3)
    assert eight.components["packed"] < one.components["packed"] / 7
    half = estimate(10**7, 10**6, 10**9, HParams(dim=128, dtype="bfloat16"), n_devices=8)
    assert half.components["tables"] * 2 == eight.components["tables"]
    assert eight.total < one.total


def test_over_budget_error_says_what_to_change():
    plan = estimate(10**8, 10**7, 10**10, HParams(dim=128, solver="cholesky"), n_devices=8)
    with pytest.raises(MemoryPlanError) as e:
        check(plan, budget=16 * GiB)
    msg = str(e.value)
    assert "over the budget of 16 GiB" in msg
    assert "devices instead of 8" in msg and "bfloat16" in msg and "--solver cg" in msg
    # The advice is right: that many devices fit.
    need = int(msg.split("about ")[1].split(" devices")[0])
    check(estimate(10**8, 10**7, 10**10, HParams(dim=128, solver="cholesky"), n_devices=need), 16 * GiB)


def test_fits_returns_plan():
    plan = estimate(1000, 1000, 10**4, HParams(dim=16), n_devices=2)
    assert check(plan, budget=GiB) is plan
    assert "per device on 2 device(s)" in plan.describe()
    assert device_budget() > 0


def _engine_data():
    rng = np.random.default_rng(0)
    dense = rng.random((40, 30)) < 0.2
    r, c = np.nonzero(dense)
    v = np.ones(len(r), np.float32)
    return coo_to_csr(r, c, v, 40, 30), coo_to_csr(c, r, v, 30, 40)


def test_engine_checks_before_copying():
    rows, cols = _engine_data()
    with pytest.raises(MemoryPlanError, match="per device"):
        ShardedEngine(rows, cols, HParams(dim=8), Packing(batch_entries=64), memory_budget=1000)
    eng = ShardedEngine(rows, cols, HParams(dim=8), Packing(batch_entries=64), memory_budget=GiB)
    exact = plan_engine(eng, [], [])
    assert exact.components["tables"] == (eng.row_layout.n_local + eng.col_layout.n_local) * 8 * 4
