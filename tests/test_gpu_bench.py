"""benchmarks/gpu.py --tiny: the GPU benchmark's code runs on the CPU in CI, so it cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_tiny(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads((tmp_path / "gpu_results.json").read_text())
    runs = got["runs"]
    # Every code path of the full benchmark once: both data sets, tied, bfloat16, the three solvers.
    assert {(r["data"], r["tied"], r["dtype"], r["solver"]) for r in runs} == {
        ("ml20m", False, "float32", "cg"),
        ("web100m", False, "float32", "cg"),
        ("web100m", True, "float32", "cg"),
        ("ml20m", False, "bfloat16", "block"),
        ("ml20m", False, "float32", "cholesky"),
    }
    for r in runs:
        assert r["status"] == "ok", r
        for key in ("s_per_epoch", "bytes", "flops", "bytes_s", "flop_s", "pack_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        # In-process (--tiny) a later run may find its programs compiled already (tied = untied shapes).
        assert math.isfinite(r["compile_s"]) and r["compile_s"] >= 0, r
        assert len(r["epoch_s"]) == 3 and r["nnz"] > 0
        # The CPU has no entry in the table of peaks and no memory_stats: n/a, not a made-up number.
        assert r["frac_bytes"] is None and r["frac_flops"] is None and r["peak_bytes"] is None
    assert runs[0]["compile_s"] > 0  # the first run compiles everything it runs
    # bfloat16 tables move fewer bytes than float32 ones for the same shapes (same d, same packing).
    f32, bf16 = (
        next(r for r in runs if r["data"] == "ml20m" and r["dim"] == 16 and r["dtype"] == dt)
        for dt in ("float32", "bfloat16")
    )
    assert bf16["bytes"] < f32["bytes"]
    table = (tmp_path / "gpu_results.md").read_text().splitlines()
    rows = [ln for ln in table if ln.startswith(("| ml20m", "| web100m"))]
    assert len(rows) == len(runs) and all(ln.rstrip().endswith("| ok |") for ln in rows)
