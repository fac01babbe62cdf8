"""The CPU backend (fused Numba CG kernel in the Gramian's eigenbasis) against the float64 oracle
and against the JAX engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from alsx.checkpoint import Checkpointer, CheckpointOptions
from alsx.config import HParams
from alsx.core import cpu, cpu_block
from alsx.core.backends import make_engine, resolve_backend
from alsx.core.engine import LocalEngine
from alsx.data.matrix import coo_to_csr
from alsx.train import run_epochs as train
from reference import loss_parts, random_problem, solve_rows

REG, ALPHA0 = 0.05, 0.2


def to_csr(conf: np.ndarray):
    r, c = np.nonzero(conf)
    return coo_to_csr(r, c, conf[r, c].astype(np.float32), *conf.shape)


def rel_err(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


def engines(conf, hp, tied=False):
    rows, cols = to_csr(conf), to_csr(conf.T)
    return cpu.CpuEngine(rows, cols, hp, tied=tied), LocalEngine(rows, cols, hp, tied=tied)


@pytest.mark.parametrize("nu", [0.0, 1.0])
def test_half_step_with_d_steps_is_the_exact_solve(nu):
    conf, w, h = random_problem(0)  # a long row, an empty row, confidences != 1
    d = w.shape[1]
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), HParams(dim=d, reg=REG, unobserved_weight=ALPHA0, nu=nu))
    out, h_rot, q = cpu.half_step(w, h, eng.rows, eng._lam[0], ALPHA0, d + 2, eng._starts[0], cpu.RowThreads(2))
    assert rel_err(out @ q.T, solve_rows(conf, h, REG, ALPHA0, nu)) < 1e-5
    assert rel_err(h_rot @ q.T, h.astype(np.float64)) < 1e-6  # h came back rotated by the same Q
    assert np.all(out[2] == 0.0)  # the empty row's optimum


def test_a_non_finite_table_is_reported_as_a_divergence_with_its_epoch():
    """A NaN in a table reaches the next half-step's Gramian: a DivergenceError naming the epoch,
    not eigh's LinAlgError ("did not converge")."""
    from alsx.errors import DivergenceError

    conf, _, _ = random_problem(1, n=30, m=20)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), HParams(dim=6, reg=REG, unobserved_weight=ALPHA0))
    st = eng.epoch(eng.init_state(0))
    st.h[3, 2] = np.nan
    with pytest.raises(DivergenceError, match=r"diverged in epoch 2: the fixed \[20, 6\] table"):
        eng.epoch(st)


@pytest.mark.parametrize("tied", [False, True])
def test_epochs_equal_the_jax_engine(tied):
    """Three CG steps per half: the same iterates as LocalEngine, only rotated."""
    conf, _, _ = random_problem(1, n=30, m=30)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, solver="cg", cg_steps=3)
    a, b = engines(conf, hp, tied)
    sa, sb = a.init_state(0), b.init_state(0)
    assert np.array_equal(a.to_numpy(sa)[0], b.to_numpy(sb)[0])  # the same start
    for _ in range(3):
        sa, sb = a.epoch(sa), b.epoch(sb)
    (wa, ha), (wb, hb) = a.to_numpy(sa), b.to_numpy(sb)
    assert rel_err(wa, wb) < 1e-4 and rel_err(ha, hb) < 1e-4
    assert sa.basis is not None and (sa.w is sa.h) == tied


def test_tables_are_stored_rotated_and_to_numpy_undoes_it():
    conf, _, _ = random_problem(2)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), HParams(dim=6, reg=REG, unobserved_weight=ALPHA0))
    st = eng.epoch(eng.epoch(eng.init_state(0)))
    b = st.basis
    assert np.abs(b.T @ b - np.eye(6)).max() < 1e-6
    assert np.abs(b - np.eye(6)).max() > 0.1  # really rotated
    w, h = eng.to_numpy(st)
    assert rel_err(w, st.w.astype(np.float64) @ b.T) < 1e-6
    # Scores are rotation-invariant: the stored tables already serve.
    assert rel_err(st.w.astype(np.float64) @ st.h.T, w.astype(np.float64) @ h.T) < 1e-5


def test_loss_parts_equal_brute_force_in_the_rotated_basis():
    conf, _, _ = random_problem(3)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    st = eng.epoch(eng.init_state(0))
    w, h = eng.to_numpy(st)
    ref = loss_parts(conf, w, h, REG, ALPHA0, 1.0)
    loss = eng.loss(st)
    assert loss.observed == pytest.approx(ref["observed"], rel=1e-5)
    assert loss.unobserved == pytest.approx(ref["unobserved"], rel=1e-5)
    assert loss.regularisation == pytest.approx(ref["regularisation"], rel=1e-5)


def test_work_blocks_cover_all_rows_with_balanced_work():
    rng = np.random.default_rng(4)
    lengths = np.minimum(rng.zipf(1.7, size=5000), 3000)  # web-like skew
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cuts = cpu.work_blocks(indptr, 64)
    assert cuts[0] == 0 and cuts[-1] == 5000 and np.all(np.diff(cuts) > 0)
    work = np.diff(indptr[cuts]) + cpu.ROW_COST * np.diff(cuts)
    fair = (indptr[-1] + cpu.ROW_COST * 5000) / 64
    assert work.max() <= fair + lengths.max() + cpu.ROW_COST


def test_row_threads_products_equal_float64():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1001, 7)).astype(np.float32)
    y = rng.normal(size=(7, 7)).astype(np.float32)
    t = cpu.RowThreads(3)
    x64 = x.astype(np.float64)
    assert rel_err(t.gram(x), x64.T @ x64) < 1e-5
    assert rel_err(t.matmul(x, y), x64 @ y) < 1e-5


def test_resume_is_bit_exact_and_other_engines_rotate_back(tmp_path):
    conf, _, _ = random_problem(6)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0)
    rows, cols = to_csr(conf), to_csr(conf.T)
    straight = train(cpu.CpuEngine(rows, cols, hp), 4)
    with Checkpointer(CheckpointOptions(str(tmp_path / "c"), every_epochs=1)) as ck:
        train(cpu.CpuEngine(rows, cols, hp), 2, checkpointer=ck)  # "killed" after epoch 2
    with Checkpointer(CheckpointOptions(str(tmp_path / "c"), every_epochs=1)) as ck:
        fresh = cpu.CpuEngine(rows, cols, hp)
        resumed = train(fresh, 4, checkpointer=ck)
        assert ck.epochs()[0] == 4
    assert np.array_equal(resumed.w, straight.w) and np.array_equal(resumed.h, straight.h)
    assert np.array_equal(resumed.basis, straight.basis)
    # The JAX engine restores the same checkpoint in the original basis.
    with Checkpointer(CheckpointOptions(str(tmp_path / "c"), every_epochs=1)) as ck:
        jax_engine = LocalEngine(rows, cols, hp)
        got = ck.restore(jax_engine).state
    w_ref, h_ref = fresh.to_numpy(straight)
    w_got, h_got = jax_engine.to_numpy(got)
    assert rel_err(w_got, w_ref) < 1e-6 and rel_err(h_got, h_ref) < 1e-6


def test_auto_picks_the_cpu_kernel_only_where_it_applies():
    assert resolve_backend("auto", HParams(solver="cg")) == "cpu"  # this machine has no accelerator
    assert resolve_backend("auto", HParams(solver="block", block_size=16)) == "cpu"
    assert resolve_backend("auto", HParams(solver="cholesky")) == "jax"
    assert resolve_backend("auto", HParams(dtype="bfloat16")) == "jax"
    assert resolve_backend("jax", HParams()) == "jax"
    with pytest.raises(ValueError, match="solver 'cholesky'"):
        resolve_backend("cpu", HParams(solver="cholesky"))
    with pytest.raises(ValueError, match="solver='cg' or 'block'"):
        cpu.CpuEngine(to_csr(random_problem(7)[0]), to_csr(random_problem(7)[0].T), HParams(dim=6, solver="cholesky"))
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("gpu", HParams())
    conf, _, _ = random_problem(7)
    assert isinstance(make_engine(to_csr(conf), to_csr(conf.T), HParams(dim=6)), cpu.CpuEngine)


def test_estimator_backends_agree():
    from alsx.model import ALS

    conf, _, _ = random_problem(8, n=50, m=40)
    import scipy.sparse as sp

    x = sp.csr_matrix(conf.astype(np.float32))
    kw = dict(dim=6, reg=REG, unobserved_weight=ALPHA0, epochs=3, progress=False)
    a = ALS(backend="cpu", **kw).fit(x)
    b = ALS(backend="jax", **kw).fit(x)
    assert a.engine_name_ == "CpuEngine" and b.engine_name_ != "CpuEngine"
    assert rel_err(a.row_embeddings_, b.row_embeddings_.astype(np.float64)) < 1e-4
    assert a.history_[-1]["loss"]["total"] == pytest.approx(b.history_[-1]["loss"]["total"], rel=1e-5)


# ============================================================================ iALS++ ('block') kernel
def block_sweep_reference(conf, w, h, shared, lam, block, sweeps=1):
    """float64 NumPy block-coordinate sweeps in the given (eigen)basis: for each block B in order,
    x_B -= (H_B^T C H_B + diag(D_B))^-1 (H^T C (H x - 1) + D x)_B with D = shared + lambda_u."""
    w, h = w.astype(np.float64), h.astype(np.float64)
    out = np.zeros_like(w)
    for u in range(conf.shape[0]):
        obs = conf[u] > 0
        if not obs.any():
            continue
        hu, cu, x, dg = h[obs], conf[u, obs], w[u].copy(), shared + lam[u]
        for _ in range(sweeps):
            for k in range(0, w.shape[1], block):
                b = slice(k, k + block)
                grad = hu[:, b].T @ (cu * (hu @ x - 1.0)) + dg[b] * x[b]
                x[b] -= np.linalg.solve((hu[:, b].T * cu) @ hu[:, b] + np.diag(dg[b]), grad)
        out[u] = x
    return out


def rotated_problem(seed, d=8, nu=1.0):
    """A random problem with both tables rotated into the eigenbasis of h^T h, as the kernel sees them."""
    conf, w, h = random_problem(seed, d=d)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), HParams(dim=d, reg=REG, unobserved_weight=ALPHA0, nu=nu))
    e, q = np.linalg.eigh(h.astype(np.float64).T @ h)
    w_rot, h_rot = (w @ q).astype(np.float32), (h @ q).astype(np.float32)
    return conf, eng, w_rot, h_rot, (ALPHA0 * e).astype(np.float32), q


@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_one_block_sweep_equals_the_float64_reference(block):
    conf, eng, w, h, shared, _ = rotated_problem(10)
    out = cpu_block.block_rows(eng.rows, eng._starts[0], w, h, shared, eng._lam[0], block, 1, np.empty_like(w))
    ref = block_sweep_reference(conf, w, h, shared.astype(np.float64), eng._lam[0], block)
    assert rel_err(out, ref) < 1e-5
    assert np.abs(ref - w).max() > 1e-2  # the sweep really moved the rows
    assert np.all(out[2] == 0.0)  # the empty row's optimum
    two = cpu_block.block_rows(eng.rows, eng._starts[0], w, h, shared, eng._lam[0], block, 2, np.empty_like(w))
    assert rel_err(two, block_sweep_reference(conf, w, h, shared.astype(np.float64), eng._lam[0], block, 2)) < 1e-5


@pytest.mark.parametrize("unit", [False, True])
@pytest.mark.parametrize("block", [1, 2, 4, 5])
def test_block_sweep_with_many_chunks_and_partial_tiles_equals_the_reference(block, unit):
    """d = 20 and rows of 0..37 items: whole 8 x 8 transposed tiles, leftover items and columns, and
    (with a small buffer) several chunks of coordinates per row; unit confidences skip the scaling."""
    rng = np.random.default_rng(15)
    n, m, d = 60, 45, 20
    conf = np.where(rng.random((n, m)) < 0.3, 1.0 + rng.random((n, m)), 0.0)
    conf[1, :37] = 1.5  # 37 items: four tiles and five leftovers
    conf[2, :] = 0.0
    if unit:
        conf = (conf > 0).astype(np.float64)
    w = (rng.normal(size=(n, d)) * 0.3).astype(np.float32)
    h = (rng.normal(size=(m, d)) * 0.3).astype(np.float32)
    e, q = np.linalg.eigh(h.astype(np.float64).T @ h)
    w, h, shared = (w @ q).astype(np.float32), (h @ q).astype(np.float32), (ALPHA0 * e).astype(np.float32)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), HParams(dim=d, reg=REG, unobserved_weight=ALPHA0))
    lam = eng._lam[0]
    ref = block_sweep_reference(conf, w, h, shared.astype(np.float64), lam, block)
    # one chunk of all d; chunks of lcm(8, b) coordinates; of 16 (a buffer wider than the budget)
    for budget, min_chunk in ((cpu_block.BUFFER_FLOATS, cpu_block.MIN_CHUNK), (64, 8), (64, 16)):
        out = cpu_block.block_rows(
            eng.rows, eng._starts[0], w, h, shared, lam, block, 1, np.empty_like(w), budget, min_chunk
        )
        assert rel_err(out, ref) < 1e-5
    assert np.abs(ref - w).max() > 1e-2 and np.all(out[2] == 0.0)


def test_block_rows_refuses_a_strided_fixed_table():
    conf, eng, w, h, shared, _ = rotated_problem(10)
    wide = np.zeros((h.shape[0], 2 * h.shape[1]), np.float32)
    wide[:, ::2] = h
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu_block.block_rows(eng.rows, eng._starts[0], w, wide[:, ::2], shared, eng._lam[0], 2, 1, np.empty_like(w))


def test_rotate_in_place_equals_the_float64_product():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1003, 6)).astype(np.float32)
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0].astype(np.float32)
    want = x.astype(np.float64) @ q.astype(np.float64)
    y = x.copy()
    out = cpu.RowThreads(2).rotate_in_place(y, q, chunk=100)  # chunks that do not divide the spans
    assert out is y and rel_err(y, want) < 1e-6


def test_release_scratch_keeps_the_state_and_training_resumes():
    conf, _, _ = random_problem(4, n=30, m=20)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, solver="cg", cg_steps=3)
    a, b = engines(conf, hp)
    sa, sb = a.epoch(a.init_state(0)), b.epoch(b.init_state(0))
    before = [t.copy() for t in a.to_numpy(sa)]
    a.release()
    assert a._buffers == {} and all(np.array_equal(t, u) for t, u in zip(a.to_numpy(sa), before))
    sa, sb = a.epoch(sa), b.epoch(sb)  # buffers come back on demand
    (wa, ha), (wb, hb) = a.to_numpy(sa), b.to_numpy(sb)
    assert rel_err(wa, wb) < 1e-4 and rel_err(ha, hb) < 1e-4


@pytest.mark.parametrize("solver", ["cg", "block"])
def test_kernels_update_in_place_exactly_as_into_a_fresh_table(solver):
    """half_step writes the warm start into ``out`` and solves there: the kernels must read a
    row's warm start before writing that row, and never read another row of ``out``."""
    conf, eng, w, h, shared, _ = rotated_problem(11)
    lam, starts = eng._lam[0], eng._starts[0]

    def run(src, dst):
        if solver == "block":
            return cpu_block.block_rows(eng.rows, starts, src, h, shared, lam, 2, 1, dst)
        cpu._cg_rows(eng.rows.indptr, eng.rows.indices, eng.rows.values, starts, src, h, shared, lam, 3, dst)
        return dst

    buf = w.copy()
    fresh, inplace = run(w, np.empty_like(w)), run(buf, buf)
    assert rel_err(inplace, fresh.astype(np.float64)) < 1e-6  # last-bit differences: alignment changes the sums
    assert np.abs(fresh - w).max() > 1e-2  # the rows really moved


@pytest.mark.parametrize("nu", [0.0, 1.0])
@pytest.mark.parametrize("block", [2, 8])
def test_block_sweeps_converge_to_the_exact_solve(block, nu):
    """Enough sweeps reach the exact row solve of the oracle; one block of all d is that solve at once."""
    conf, w, h = random_problem(11, d=8)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), HParams(dim=8, reg=REG, unobserved_weight=ALPHA0, nu=nu))
    sweeps = 1 if block == 8 else 60
    out, _, q = cpu.half_step(
        w, h, eng.rows, eng._lam[0], ALPHA0, 3, eng._starts[0], cpu.RowThreads(2), block_size=block, sweeps=sweeps
    )
    exact = solve_rows(conf, h, REG, ALPHA0, nu)
    assert rel_err(out @ q.T, exact) < 1e-5
    one, _, q = cpu.half_step(
        w, h, eng.rows, eng._lam[0], ALPHA0, 3, eng._starts[0], cpu.RowThreads(2), block_size=block, sweeps=1
    )
    if block < 8:
        assert rel_err(one @ q.T, exact) > 1e-3  # one sweep of small blocks is not yet exact: the test can fail


def test_block_engine_epochs_equal_a_numpy_reference_in_the_same_basis():
    """CpuEngine 'block' epochs against float64 NumPy: each half-step rotates into the eigenbasis of the
    fixed table's Gramian and sweeps once there.  (Not against LocalEngine: its blocks are in the original
    basis, a different iteration with the same fixed point; see the next test.)"""
    conf, _, _ = random_problem(12, n=30, m=25)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, solver="block", block_size=2)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    st = eng.init_state(0)
    w, h = (x.astype(np.float64) for x in eng.to_numpy(st))
    lam_w, lam_h = eng._lam

    def half(w, h, conf, lam):
        e, q = np.linalg.eigh(h.T @ h)
        return block_sweep_reference(conf, w @ q, h @ q, ALPHA0 * e, lam, 2) @ q.T

    for _ in range(3):
        st = eng.epoch(st)
        w = half(w, h, conf, lam_w)
        h = half(h, w, conf.T, lam_h)
    got_w, got_h = eng.to_numpy(st)
    assert rel_err(got_w, w) < 1e-4 and rel_err(got_h, h) < 1e-4
    assert eng.loss(st).total < cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp).loss(eng.init_state(0)).total


def exact_residuals(csr, w, h):
    """float64 sqrt(c) (1 - <w_u, h_i>) per stored entry of ``csr``, in its order."""
    u = np.repeat(np.arange(csr.n_rows), np.diff(csr.indptr))
    s = np.einsum("ij,ij->i", w[u].astype(np.float64), h[csr.indices].astype(np.float64))
    return np.sqrt(csr.values.astype(np.float64)) * (1.0 - s)


def test_transpose_positions_map_each_entry_to_its_place_in_the_transpose():
    conf, _, _ = random_problem(16, n=50, m=35)
    rows, cols = cpu._as_csr32(to_csr(conf)), cpu._as_csr32(to_csr(conf.T))
    r2c, c2r = cpu_block.transpose_positions(rows, cols)
    row_of = np.repeat(np.arange(rows.n_rows), np.diff(rows.indptr))
    col_of = np.repeat(np.arange(cols.n_rows), np.diff(cols.indptr))
    assert np.array_equal(cols.indices[r2c], row_of) and np.array_equal(col_of[r2c], rows.indices)
    assert np.array_equal(cols.values[r2c], rows.values)
    assert np.array_equal(c2r[r2c], np.arange(rows.nnz)) and r2c.dtype == np.int32
    # a transpose whose rows are not ascending within a column: no positions (no hand-off)
    shuffled = dataclasses.replace(cols, indices=cols.indices.copy())
    a, b = cols.indptr[1], cols.indptr[2]  # column 1 has several rows
    assert b - a >= 2
    shuffled.indices[a:b] = shuffled.indices[a:b][::-1]
    assert cpu_block.transpose_positions(rows, shuffled) is None


def test_block_epochs_hand_residuals_on_exactly(monkeypatch):
    """Each half-step's final residuals, handed to the next one, are the scores it would compute
    itself: epochs with the hand-off equal epochs that rescore every half-step, and what is left
    for the next epoch is the residual of the returned state."""
    conf, _, _ = random_problem(17, n=40, m=30, d=16)
    hp = HParams(dim=16, reg=REG, unobserved_weight=ALPHA0, solver="block", block_size=1)
    handed = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    calls = []
    real = cpu.block_rows
    monkeypatch.setattr(cpu, "block_rows", lambda *a, **k: calls.append(k["residuals_in"] is not None) or real(*a, **k))
    st = handed.init_state(0)
    for _ in range(4):
        st = handed.epoch(st)
    assert calls == [False] + [True] * 7  # only the very first half-step ran its score pass
    assert rel_err(handed._buffers["r_rows"], exact_residuals(handed.rows, st.w, st.h)) < 1e-5

    monkeypatch.setattr(cpu, "RESCORE_EVERY", 1)  # every epoch starts from its own score pass
    calls.clear()
    rescored = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    sr = rescored.init_state(0)
    for _ in range(4):
        sr = rescored.epoch(sr)
    assert calls == [False, True] * 4
    (wa, ha), (wb, hb) = handed.to_numpy(st), rescored.to_numpy(sr)
    assert rel_err(wa, wb.astype(np.float64)) < 1e-5 and rel_err(ha, hb.astype(np.float64)) < 1e-5


def test_block_engine_defaults_to_blocks_of_one():
    """block_size=0 (the default) runs the CPU kernel with b = 1: the same tables as asking for it."""
    conf, _, _ = random_problem(19, n=30, m=20, d=8)
    tables = []
    for b in (0, 1, 2):
        eng = cpu.CpuEngine(
            to_csr(conf),
            to_csr(conf.T),
            HParams(dim=8, reg=REG, unobserved_weight=ALPHA0, solver="block", block_size=b),
        )
        tables.append(eng.to_numpy(eng.epoch(eng.epoch(eng.init_state(0))))[0])
    assert np.array_equal(tables[0], tables[1])
    assert not np.allclose(tables[0], tables[2], atol=1e-6)  # the size matters, so the check can fail


def test_block_epoch_from_another_state_rescores():
    """Residuals are handed on only to the state they belong to: an epoch from an older state
    (a resume, a rerun) recomputes its scores and equals a fresh engine's epoch."""
    conf, _, _ = random_problem(18, n=40, m=30, d=16)
    hp = HParams(dim=16, reg=REG, unobserved_weight=ALPHA0, solver="block", block_size=2)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    s1 = eng.epoch(eng.init_state(0))
    eng.epoch(eng.epoch(s1))  # the engine now holds residuals of a later state
    again = eng.epoch(s1)
    fresh = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    want = fresh.epoch(fresh.from_external(*eng.to_numpy(s1), epoch=1))
    assert rel_err(eng.to_numpy(again)[0], fresh.to_numpy(want)[0].astype(np.float64)) < 1e-5


@pytest.mark.parametrize("tied", [False, True])
def test_block_engine_with_one_block_equals_the_jax_engine(tied):
    """block_size = d: one block is the exact solve in any basis, so both engines agree epoch by epoch."""
    conf, _, _ = random_problem(13, n=30, m=30)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, solver="block", block_size=6)
    a, b = engines(conf, hp, tied)
    sa, sb = a.init_state(0), b.init_state(0)
    for _ in range(3):
        sa, sb = a.epoch(sa), b.epoch(sb)
    (wa, ha), (wb, hb) = a.to_numpy(sa), b.to_numpy(sb)
    assert rel_err(wa, wb) < 1e-4 and rel_err(ha, hb) < 1e-4


def test_profile_of_the_block_solver_counts_its_own_kernel():
    conf, _, _ = random_problem(14)
    hp = HParams(dim=6, reg=REG, unobserved_weight=ALPHA0, solver="block", block_size=2)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    p = cpu.profile_half_step(eng, eng.epoch(eng.init_state(0)), "rows", repeat=1)
    assert p["solve_gflops"] > 0 and p["residual"] >= 0 and p["cg_steps"] >= 0
    nnz, d = int((conf > 0).sum()), 6
    assert cpu_block.block_flops(nnz, conf.shape[0], d, 2, 1) == nnz * (2 * d + 3 * (6 + 8)) + 40 * 3 * (8 / 3 + 8)


def test_table_pool_reuses_memory_only_when_no_array_holds_it():
    pool = cpu.TablePool()
    n, d = 1 << 15, 64  # 8 MiB: a real mapping (smaller tables are plain np.empty)
    a = pool.take(n, d)
    view = a[5:9]
    del a
    b = pool.take(n, d)  # the view keeps a's memory alive
    assert not np.shares_memory(b, view)
    view[:] = 1.0
    b[:] = 2.0
    assert np.all(view == 1.0)
    del view
    c = pool.take(n, d)  # a's memory, now free
    assert not np.shares_memory(c, b) and c.shape == (n, d) and c.dtype == np.float32
    del b, c
    pool.take(n, d)
    assert len(pool._maps[(n, d)]) == 1  # free spares beyond one are released


def test_earlier_states_stay_valid_with_pooled_tables():
    rng = np.random.default_rng(9)
    conf = (rng.random((40_000, 70)) < 0.002).astype(np.float32)  # 40k x 64 float32 tables: pooled mappings
    hp = HParams(dim=64, reg=REG, unobserved_weight=ALPHA0)
    eng = cpu.CpuEngine(to_csr(conf), to_csr(conf.T), hp)
    st1 = eng.epoch(eng.init_state(0))
    w1, h1 = st1.w.copy(), st1.h.copy()
    st = st1
    for _ in range(3):
        st = eng.epoch(st)
    assert np.array_equal(st1.w, w1) and np.array_equal(st1.h, h1)
    assert not np.shares_memory(st.w, st1.w)
    assert len(eng._pool._maps[(40_000, 64)]) <= 3  # st1's, st's and one reused spare
