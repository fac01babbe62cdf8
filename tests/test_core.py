"""The half-epoch step, solvers and objective against the float64 NumPy oracle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsx.config import HParams, Packing
from alsx.core.engine import LocalEngine
from alsx.core.objective import unobserved_term
from alsx.core.state import init_state
from alsx.core.step import half_step, observed_loss
from alsx.data.matrix import CSR, coo_to_csr
from alsx.data.packing import pack
from reference import loss_parts, random_problem, solve_rows

NARROW = Packing(n_buckets=3, max_width=8, batch_entries=16)  # several buckets + long rows on tiny data
LAYOUTS = [Packing(), NARROW]
REG, ALPHA0, NU = 0.05, 0.2, 1.0


def to_csr(conf: np.ndarray) -> CSR:
    r, c = np.nonzero(conf)
    return coo_to_csr(r, c, conf[r, c].astype(np.float32), *conf.shape)


def run_half(conf, w, h, packing, solver, steps, nu=NU):
    side = jax.device_put(pack(to_csr(conf), w.shape[1], packing, dense_rows=solver == "cholesky").arrays())
    out = half_step(jnp.asarray(w), jnp.asarray(h), side, REG, ALPHA0, nu, solver=solver, cg_steps=steps)
    return np.asarray(out, np.float64)


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("packing", LAYOUTS, ids=["default", "narrow"])
@pytest.mark.parametrize("nu", [0.0, 1.0])
def test_exact_half_step_equals_float64_solve(packing, nu):
    conf, w, h = random_problem(0)
    ref = solve_rows(conf, h, REG, ALPHA0, nu)
    got = run_half(conf, w, h, packing, "cholesky", 1, nu=nu)
    assert rel_err(got, ref) < 1e-5
    assert np.all(got[2] == 0.0)  # an empty row's optimum is exactly 0


def test_narrow_packing_really_splits_long_rows():
    conf, _, _ = random_problem(0)
    side = pack(to_csr(conf), 6, NARROW)
    assert side.long is not None and 1 in side.long.rows
    assert len(side.blocks) >= 2


@pytest.mark.parametrize("packing", LAYOUTS, ids=["default", "narrow"])
def test_cg_with_d_steps_matches_exact(packing):
    conf, w, h = random_problem(1)
    d = w.shape[1]
    exact = run_half(conf, w, h, packing, "cholesky", 1)
    # CG in exact arithmetic converges in d steps; allow a few more for float32 rounding.
    got = run_half(conf, w, h, packing, "cg", d + 2)
    assert rel_err(got, exact) < 1e-4


def test_cg_few_steps_improves_on_warm_start():
    conf, w, h = random_problem(2)
    exact = solve_rows(conf, h, REG, ALPHA0, NU)
    one = run_half(conf, w, h, NARROW, "cg", 1)
    three = run_half(conf, w, h, NARROW, "cg", 3)
    start = np.abs(w - exact).max()
    assert np.abs(three - exact).max() < np.abs(one - exact).max() < start


@pytest.mark.parametrize("packing", LAYOUTS, ids=["default", "narrow"])
def test_loss_parts_equal_brute_force(packing):
    conf, w, h = random_problem(3)
    hp = HParams(dim=w.shape[1], reg=REG, unobserved_weight=ALPHA0, nu=NU, solver="cholesky")
    eng = LocalEngine(to_csr(conf), to_csr(conf.T), hp, packing)
    from alsx.core.state import ALSState

    loss = eng.loss(ALSState(w=jnp.asarray(w), h=jnp.asarray(h)))
    ref = loss_parts(conf, w, h, REG, ALPHA0, NU)
    assert loss.observed == pytest.approx(ref["observed"], rel=1e-5)
    assert loss.unobserved == pytest.approx(ref["unobserved"], rel=1e-5)
    assert loss.regularisation == pytest.approx(ref["regularisation"], rel=1e-5)


def test_gramian_term_equals_all_pairs_sum():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(17, 5)).astype(np.float32)
    h = rng.normal(size=(11, 5)).astype(np.float32)
    brute = 0.3 * sum(float(np.dot(w[u].astype(np.float64), h[i])) ** 2 for u in range(17) for i in range(11))
    assert float(unobserved_term(jnp.asarray(w), jnp.asarray(h), 0.3)) == pytest.approx(brute, rel=1e-5)


def test_observed_loss_counts_each_entry_once_with_long_rows():
    conf, w, h = random_problem(5)
    side = jax.device_put(pack(to_csr(conf), w.shape[1], NARROW).arrays())
    s = w.astype(np.float64) @ h.T.astype(np.float64)
    ref = np.sum(np.where(conf > 0, conf * (s - 1) ** 2, 0))
    assert float(observed_loss(jnp.asarray(w), jnp.asarray(h), side)) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("packing", LAYOUTS, ids=["default", "narrow"])
@pytest.mark.parametrize("solver", ["cholesky", "block"])
def test_exact_solvers_never_increase_loss(packing, solver):
    """Cholesky solves each half exactly; iALS++ minimises exactly over each subspace in turn."""
    conf, _, _ = random_problem(6, n=60, m=45, d=8)
    hp = HParams(dim=8, reg=REG, unobserved_weight=ALPHA0, nu=NU, solver=solver, block_size=4)
    eng = LocalEngine(to_csr(conf), to_csr(conf.T), hp, packing)
    st = eng.init_state(0)
    prev = eng.loss(st).total
    for _ in range(6):
        st = eng.epoch(st)
        cur = eng.loss(st).total
        assert cur <= prev * (1 + 1e-6)
        prev = cur


def test_epoch_equals_two_reference_half_steps():
    conf, _, _ = random_problem(7)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, nu=NU, solver="cholesky")
    eng = LocalEngine(to_csr(conf), to_csr(conf.T), hp, NARROW)
    st = eng.init_state(3)
    w0, h0 = eng.to_numpy(st)
    w1, h1 = eng.to_numpy(eng.epoch(st))
    ref_w = solve_rows(conf, h0, REG, ALPHA0, NU)
    ref_h = solve_rows(conf.T, ref_w, REG, ALPHA0, NU)
    assert rel_err(w1, ref_w) < 1e-5
    assert rel_err(h1, ref_h) < 1e-4


def test_tied_embeddings_share_one_table():
    conf, _, _ = random_problem(8, n=30, m=30)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, nu=NU, solver="cholesky")
    eng = LocalEngine(to_csr(conf), to_csr(conf.T), hp, NARROW, tied=True)
    st = eng.init_state(0)
    e0 = np.asarray(st.w, np.float64)
    st = eng.epoch(st)
    assert st.w is st.h
    # The epoch is the row update against E, then the column update against the new E.
    e_half = solve_rows(conf, e0, REG, ALPHA0, NU)
    e_full = solve_rows(conf.T, e_half, REG, ALPHA0, NU)
    assert rel_err(np.asarray(st.w, np.float64), e_full) < 1e-4


def test_tied_requires_square():
    conf, _, _ = random_problem(0)
    hp = HParams(dim=6)
    with pytest.raises(ValueError, match="square"):
        LocalEngine(to_csr(conf), to_csr(conf.T), hp, tied=True)


def test_bfloat16_tables_close_to_float32():
    conf, _, _ = random_problem(9, n=80, m=60, d=8)
    res = {}
    for dtype in ("float32", "bfloat16"):
        hp = HParams(dim=8, reg=REG, unobserved_weight=ALPHA0, nu=NU, solver="cholesky", dtype=dtype)
        eng = LocalEngine(to_csr(conf), to_csr(conf.T), hp, NARROW)
        st = eng.init_state(0)
        for _ in range(3):
            st = eng.epoch(st)
        assert st.w.dtype == (jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
        w, h = eng.to_numpy(st)
        res[dtype] = w @ h.T
    # bf16 keeps 8 bits of mantissa: scores agree to a few 1e-2 of their range.
    assert np.abs(res["bfloat16"] - res["float32"]).max() < 0.03 * np.abs(res["float32"]).max()


def test_packing_places_every_entry_exactly_once():
    rng = np.random.default_rng(10)
    lengths = np.array([0, 1, 2, 3, 7, 8, 9, 17, 40, 5])
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.concatenate([rng.choice(50, n, replace=False) for n in lengths])
    vals = rng.random(len(rows)).astype(np.float32) + 0.5
    csr = coo_to_csr(rows, cols, vals, len(lengths), 50)
    side = pack(csr, 4, NARROW)
    got = []
    for b in side.blocks:
        r = np.broadcast_to(b.rows[..., None], b.cols.shape)
        m = b.conf > 0
        got.append(np.stack([r[m], b.cols[m], b.conf[m]], 1))
    lr = side.long
    r = np.broadcast_to(lr.rows[lr.seg][..., None], lr.cols.shape)
    m = lr.conf > 0
    got.append(np.stack([r[m], lr.cols[m], lr.conf[m]], 1))
    got = np.concatenate(got)
    got = got[np.lexsort((got[:, 1], got[:, 0]))]
    ref = np.stack([rows, cols, vals], 1)
    ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
    np.testing.assert_array_equal(got, ref)
    assert side.nnz == len(rows) and 0 < side.fill_ratio <= 1
    assert set(lr.rows.tolist()) == {6, 7, 8}  # the rows longer than max_width=8


@pytest.mark.parametrize("packing", LAYOUTS, ids=["default", "narrow"])
def test_block_solver_with_one_block_is_exact(packing):
    conf, w, h = random_problem(11)
    d = w.shape[1]
    side = jax.device_put(pack(to_csr(conf), d, packing).arrays())
    got = half_step(jnp.asarray(w), jnp.asarray(h), side, REG, ALPHA0, NU, solver="block", block_size=d)
    assert rel_err(np.asarray(got, np.float64), solve_rows(conf, h, REG, ALPHA0, NU)) < 1e-5


@pytest.mark.parametrize("packing", LAYOUTS, ids=["default", "narrow"])
def test_block_solver_sweeps_converge_to_exact(packing):
    conf, w, h = random_problem(12, d=8)
    side = jax.device_put(pack(to_csr(conf), 8, packing).arrays())
    exact = solve_rows(conf, h, REG, ALPHA0, NU)
    x = jnp.asarray(w)
    errs = []
    for _ in range(30):  # repeated sweeps with h fixed = block coordinate descent on one convex problem
        x = half_step(x, jnp.asarray(h), side, REG, ALPHA0, NU, solver="block", block_size=2)
        errs.append(rel_err(np.asarray(x, np.float64), exact))
    assert errs[1] < errs[0] and errs[-1] < 1e-4


def test_block_size_must_divide_dim():
    with pytest.raises(ValueError, match="divide"):
        HParams(dim=10, solver="block", block_size=4)
    with pytest.raises(ValueError, match="divide"):
        HParams(dim=10, solver="block", block_size=-1)


def test_block_width_is_the_backends_choice_unless_given():
    assert HParams(dim=96, solver="block").block_width("cpu") == 1
    assert HParams(dim=96, solver="block").block_width("jax") == 48  # largest divisor of 96 up to 64
    assert HParams(dim=1024, solver="block").block_width("jax") == 64
    assert HParams(dim=7, solver="block").block_width("jax") == 7  # d <= 64: one exact block
    assert HParams(dim=12, solver="block", block_size=4).block_width("cpu") == 4
    assert HParams(dim=12, solver="cg", block_size=4).block_width("jax") == 0


def test_init_draws_the_asked_distribution():
    s = 0.2 / np.sqrt(16)
    uni = init_state(3, 500, 300, HParams(dim=16, init="uniform", init_scale=0.2), tied=False)
    nor = init_state(3, 500, 300, HParams(dim=16, init_scale=0.2), tied=False)
    for t in (np.asarray(uni.w), np.asarray(uni.h)):
        assert t.min() >= 0 and t.max() < 2 * s  # U[0, 2s): all positive, as implicit starts
        assert abs(t.mean() - s) < 0.03 * s and abs(t.std() - 2 * s / np.sqrt(12)) < 0.03 * s
    w = np.asarray(nor.w)
    assert w.min() < 0 and abs(w.mean()) < 0.03 * s and abs(w.std() - s) < 0.03 * s
    with pytest.raises(ValueError, match="init must be"):
        HParams(init="zeros")


def test_uniform_init_survives_save_and_load(tmp_path):
    from alsx.data.matrix import Interactions
    from alsx.model import ALS

    x = Interactions(
        rows=np.array([0, 1, 2, 2], np.int32),
        cols=np.array([1, 0, 2, 1], np.int32),
        values=np.ones(4, np.float32),
        shape=(3, 3),
    )
    m = ALS(dim=4, epochs=1, init="uniform", progress=False, backend="jax").fit(x)
    assert ALS.load(m.save(tmp_path / "m")).hparams.init == "uniform"


def test_profile_reports_every_phase():
    from alsx.core.profile import profile_half_step, solve_flops

    conf, w, h = random_problem(14)
    side = jax.device_put(pack(to_csr(conf), w.shape[1], NARROW).arrays())
    hp = HParams(dim=w.shape[1], reg=REG, unobserved_weight=ALPHA0)
    prof = profile_half_step(jnp.asarray(w), jnp.asarray(h), side, hp)
    phases = ["gramian", "gather", "normal_equations", "solve", "scatter", "long_rows"]
    assert all(prof[p] >= 0 for p in phases) and prof["long_rows"] > 0
    assert prof["total"] == pytest.approx(sum(prof[p] for p in phases))
    assert prof["sgemm_gflops"] > 0
    # CG, 3 steps, d=4: per entry 2 passes of 2d flops for the starting residual and for each
    # step's matvec (4 x 2 x 2d), per row 4 products x G of 2d^2.
    assert solve_flops(10, 2, 4, HParams(dim=4, cg_steps=3)) == 10 * 4 * 2 * 8 + 2 * 4 * 2 * 16


def test_many_concurrent_cholesky_solves_do_not_deadlock(tmp_path):
    """More independent batched Cholesky solves in one program than XLA has pool threads.

    jaxlib's batched LAPACK kernels wait on the pool they split their batch over; with
    every pool thread inside such a wait, the program hung forever (seen in training).
    Run in a child with a deadline so a regression fails instead of hanging the suite.
    """
    import os
    import subprocess
    import sys

    n_calls = (os.cpu_count() or 2) + 2
    code = f"""
import jax, jax.numpy as jnp, numpy as np
from alsx.core.solvers import cholesky
r = np.random.default_rng(0).random((2000, 32, 32)).astype(np.float32)
a = jnp.asarray(r @ r.transpose(0, 2, 1) + 32 * np.eye(32, dtype=np.float32))
b = jnp.ones((2000, 32), jnp.float32)
f = jax.jit(lambda a: [cholesky(a * (1 + i), b) for i in range({n_calls})])
for _ in range(10):
    out = jax.block_until_ready(f(a))
x = np.asarray(out[0], np.float64)
want = np.linalg.solve(np.asarray(a, np.float64), np.ones((2000, 32, 1)))[..., 0]
print("maxerr", float(np.abs(x - want).max() / np.abs(want).max()))
"""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split("maxerr")[1]) < 1e-4
