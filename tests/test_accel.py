"""accel: the auto bucket count (Packing.n_buckets = 0), the compilation cache of the library path, batched Cholesky."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from alsx.compile_cache import cache_dir
from alsx.config import Packing
from alsx.data.packing import bucket_widths, side_widths

ROOT = Path(__file__).resolve().parents[1]


def waste(lengths: np.ndarray, widths: np.ndarray) -> int:
    """Padded entries of rows padded to the first width >= their length."""
    short = lengths[(lengths > 0) & (lengths <= widths[-1])]
    return int((widths[np.searchsorted(widths, short)] - short).sum())


def powerlaw_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum((rng.pareto(1.2, n) * 3 + 1).astype(np.int64), 1024)


def test_explicit_bucket_count_is_unchanged():
    lengths = powerlaw_lengths(5000)
    cfg = Packing(n_buckets=7)
    assert np.array_equal(side_widths(lengths, cfg), bucket_widths(lengths, 7, cfg.max_width))
    assert len(side_widths(lengths, cfg)) == 7


def test_auto_minimises_padding_plus_a_charge_per_width():
    lengths = powerlaw_lengths(5000)
    cfg = Packing(n_buckets=0, max_buckets=10, bucket_saving=3000)
    got = side_widths(lengths, cfg)
    # Brute force over the bucket count with the exact per-count optimum.
    costs = {k: waste(lengths, bucket_widths(lengths, k, 1024)) + 3000 * k for k in range(1, 11)}
    assert waste(lengths, got) + 3000 * len(got) == min(costs.values())
    assert 1 < len(got) < 10  # the charge matters at this size


def test_auto_keeps_all_widths_on_large_inputs_and_few_on_small_ones():
    big = np.repeat(powerlaw_lengths(5000), 200)  # 1M rows: every width saves far more than the charge
    small = powerlaw_lengths(300)
    assert np.array_equal(side_widths(big, Packing()), bucket_widths(big, 10, 1024))
    assert len(side_widths(small, Packing())) <= 2


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALSX_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == str(tmp_path / "c")
    monkeypatch.setenv("ALSX_CACHE_DIR", "")
    assert cache_dir() is None  # "" turns the cache off
    monkeypatch.delenv("ALSX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "alsx" / "jax")


def test_fit_writes_and_reuses_the_compilation_cache(tmp_path):
    """ALS.fit with backend 'jax' (the library path, no CLI) stores its programs in ALSX_CACHE_DIR."""
    code = (
        "import numpy as np, jax; from alsx.model import ALS; from alsx.data.matrix import Interactions\n"
        "rng = np.random.default_rng(0); k = np.unique(rng.integers(0, 200 * 150, 3000))\n"
        "x = Interactions(rows=(k // 150).astype(np.int32), cols=(k % 150).astype(np.int32),"
        " values=np.ones(len(k), np.float32), shape=(200, 150))\n"
        "ALS(dim=8, epochs=1, backend='jax').fit(x)\n"
        "print(jax.config.jax_compilation_cache_dir)\n"
    )
    env = dict(os.environ, ALSX_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device: an in-process `alsx --cpu-devices N` earlier in the run sets it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == str(tmp_path)
    assert any(f.name.startswith("jit_block_update") for f in tmp_path.iterdir())


def test_batched_cholesky_matches_the_per_row_solve():
    """The accelerator path of solvers.cholesky (batched kernels) solves the same systems."""
    import jax.numpy as jnp

    from alsx.core.solvers import cholesky, cholesky_batched

    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 5, 5))
    a = m @ m.transpose(0, 2, 1) + 5 * np.eye(5)
    b = rng.normal(size=(6, 5))
    want = np.linalg.solve(a, b[..., None])[..., 0]
    for fn in (cholesky, cholesky_batched):
        got = np.asarray(fn(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class Compiles:
    """Counts the XLA programs JAX compiles (or loads from the persistent cache) while active."""

    def __enter__(self):
        import jax.monitoring

        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            self.n += 1

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listen)


def to_csr(conf: np.ndarray):
    from alsx.data.matrix import coo_to_csr

    r, c = np.nonzero(conf)
    return coo_to_csr(r, c, conf[r, c].astype(np.float32), *conf.shape)


def test_small_input_compiles_one_program_per_width_and_side_and_none_after_the_first_epoch():
    """init: 1 program; epoch 1: a prologue + one bucket program per width, per side; loss: 2."""
    import jax

    from alsx.config import HParams
    from alsx.core.engine import LocalEngine
    from reference import random_problem

    conf, _, _ = random_problem(7, n=43, m=31, d=5)  # shapes no other test compiles
    rows, cols = to_csr(conf), to_csr(conf.T)
    eng = LocalEngine(rows, cols, HParams(dim=5), Packing(n_buckets=1, max_width=1024))
    widths = len(eng.packed("rows")["blocks"]) + len(eng.packed("cols")["blocks"])
    counts = []
    for step in ("init", "epoch", "epoch", "loss", "loss"):
        with Compiles() as c:
            if step == "init":
                st = eng.init_state(0)
            elif step == "epoch":
                st = eng.epoch(st)
            else:
                eng.loss(st)
            jax.block_until_ready(st.w)
        counts.append(c.n)
    assert widths == 2
    assert counts == [1, 2 + widths, 0, 2, 0]


def test_cpu_jit_compiles_with_the_options_at_top_level_and_inlines_inside_jit(monkeypatch):
    import jax
    import jax.numpy as jnp

    from alsx.compile_cache import OPTIONS_ENV, cpu_jit

    f = cpu_jit(lambda x: x * 3.0 + 1.0)
    x = jnp.arange(7, dtype=jnp.float32)  # a shape no other test uses with this function
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    with Compiles() as c:
        np.testing.assert_array_equal(np.asarray(f(x)), np.arange(7) * 3.0 + 1.0)
        f.quick(x)  # the program the call compiled: no new compile
    assert c.n == 1
    monkeypatch.setenv(OPTIONS_ENV, "0")
    with Compiles() as c:
        f(x)
        f.plain(x)  # XLA's defaults now
    assert c.n == 1
    monkeypatch.delenv(OPTIONS_ENV)
    nested = jax.jit(lambda x: f(x).sum())  # options only apply at top level: no error inside jit
    assert float(nested(x)) == float((np.arange(7) * 3.0 + 1.0).sum())


def test_init_in_one_program_draws_the_tables_of_separate_calls_bit_for_bit():
    import jax

    from alsx.config import HParams
    from alsx.core.state import init_state, init_table

    for hp, tied in ((HParams(dim=6), False), (HParams(dim=4, dtype="bfloat16"), True)):
        st = init_state(5, 23, 23 if tied else 17, hp, tied)
        kw, kh = jax.random.split(jax.random.PRNGKey(5))  # what init_state did op by op before
        w = init_table(kw, 23, hp.dim, hp.init_scale, hp.dtype, hp.init)
        assert st.w.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(st.w, np.float32), np.asarray(w, np.float32))
        if tied:
            assert st.h is st.w
        else:
            h = init_table(kh, 17, hp.dim, hp.init_scale, hp.dtype, hp.init)
            np.testing.assert_array_equal(np.asarray(st.h), np.asarray(h))


def test_half_step_with_the_cpu_options_matches_xla_defaults_and_the_float64_reference(monkeypatch):
    import jax.numpy as jnp

    from alsx.compile_cache import OPTIONS_ENV
    from alsx.core.step import half_step
    from alsx.data.packing import pack
    from reference import cg_half_step, csr_lambdas, random_problem

    conf, w, h = random_problem(8, n=37, m=29, d=6)
    csr = to_csr(conf)
    side = pack(csr, 6, Packing(n_buckets=1, max_width=8, batch_entries=16)).arrays()  # a bucket + long rows
    got = {}
    for flag in ("1", "0"):
        monkeypatch.setenv(OPTIONS_ENV, flag)
        got[flag] = np.asarray(half_step(jnp.asarray(w), jnp.asarray(h), side, 0.05, 0.2, 1.0, cg_steps=3), np.float64)
    lam = csr_lambdas(csr.indptr, csr.n_cols, 0.05, 0.2, 1.0)
    ref = cg_half_step(csr.indptr, csr.indices, csr.values, np.float64(w), np.float64(h), lam, 0.2, 3)
    scale = np.abs(ref).max()
    assert np.abs(got["1"] - ref).max() / scale < 1e-5
    assert np.abs(got["1"] - got["0"]).max() / scale < 1e-5
