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
