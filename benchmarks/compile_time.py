"""Start-up of the JAX engine on small inputs: compile seconds by bucket count, cold and warm cache.

    PYTHONPATH=src python benchmarks/compile_time.py [--entries 135000] [--cnr-epochs 4]

Each measurement is a fresh child interpreter (nothing compiled in memory): it builds a
``LocalEngine`` (backend 'jax') on the first ``--entries`` entries of citeulike-a, runs 3
epochs and reports compile = epoch 1 - median(epochs 2, 3), the programs compiled (JAX's
compile log) and the seconds from start to the end of epoch 1.  Cold: an empty persistent
cache folder; warm: the same folder again.  Then the s/epoch on cnr-2000 with the old fixed
10 buckets and the auto choice, epochs alternated in one process (so load changes hit both).
Writes benchmarks/results_compile.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ALSX_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results_compile.md"


def load(name: str, entries: int | None):
    from alsx.data.matrix import coo_to_csr

    z = np.load(DATA / name, allow_pickle=False)
    n, m = (int(v) for v in z["shape"])
    r, c = z["rows"][:entries], z["cols"][:entries]
    v = np.ones(len(r), np.float32)
    return coo_to_csr(r, c, v, n, m), coo_to_csr(c, r, v, m, n)


def child(n_buckets: int, entries: int, dim: int) -> dict:
    t0 = time.perf_counter()
    import jax

    from alsx.config import HParams, Packing
    from alsx.core.backends import make_engine

    compiles = []

    class Count(logging.Handler):
        def emit(self, record):
            if "Finished XLA compilation" in record.getMessage() or "Compiling" in record.getMessage():
                compiles.append(record.getMessage())

    jax.config.update("jax_log_compiles", True)
    for name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.compiler"):
        logging.getLogger(name).addHandler(Count())
    rows, cols = load("citeulike_a.npz", entries)
    eng = make_engine(rows, cols, HParams(dim=dim), Packing(n_buckets=n_buckets), backend="jax")
    state = eng.init_state(0)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        state = eng.epoch(state)
        jax.block_until_ready(state.w)
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            first_done = time.perf_counter() - t0
    later = float(np.median(times[1:]))
    return {
        "n_buckets": n_buckets,
        "widths": [len(eng.packed("rows")["blocks"]), len(eng.packed("cols")["blocks"])],
        "fill": [eng.stats.row_fill, eng.stats.col_fill],
        "epochs": times,
        "compile_s": times[0] - later,
        "s_per_epoch": later,
        "to_first_epoch_s": first_done,
        "programs": sum("Compiling" in c for c in compiles),
    }


def run_child(n_buckets: int, entries: int, dim: int, cache: str) -> dict:
    env = dict(os.environ, ALSX_CACHE_DIR=cache)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", str(n_buckets), "--entries", str(entries), "--dim", str(dim)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def cnr_epochs(epochs: int, dim: int) -> dict:
    import jax

    from alsx.config import HParams, Packing
    from alsx.core.engine import LocalEngine

    rows, cols = load("web_cnr2000.npz", None)
    out = {}
    engines = {k: LocalEngine(rows, cols, HParams(dim=dim), Packing(n_buckets=k)) for k in (10, 0)}
    states = {k: e.init_state(0) for k, e in engines.items()}
    times: dict = {k: [] for k in engines}
    for i in range(epochs + 1):  # the first round compiles
        for k, e in engines.items():
            t = time.perf_counter()
            states[k] = e.epoch(states[k])
            jax.block_until_ready(states[k].w)
            if i:
                times[k].append(time.perf_counter() - t)
    for k, e in engines.items():
        out[k] = {
            "widths": [len(e._rows["blocks"]), len(e._cols["blocks"])],
            "fill": [e.stats.row_fill, e.stats.col_fill],
            "s_per_epoch": float(np.median(times[k])),
            "epochs": times[k],
        }
    w10, w0 = engines[10].to_numpy(states[10])[0], engines[0].to_numpy(states[0])[0]
    out["max_abs_diff"] = float(np.abs(w10 - w0).max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=135_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--cnr-epochs", type=int, default=4)
    ap.add_argument("--child", type=int, default=None)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.entries, a.dim)))
        return
    rows = []
    for nb in (10, 3, 0):
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child(nb, a.entries, a.dim, cache)
            warm = run_child(nb, a.entries, a.dim, cache)
        rows.append((nb, cold, warm))
        print(nb, cold["compile_s"], warm["compile_s"], flush=True)
    off = run_child(0, a.entries, a.dim, "")
    cnr = cnr_epochs(a.cnr_epochs, a.dim)
    load_avg = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# JAX engine start-up on a small input: compile seconds by bucket count",
        "",
        f"Command: `PYTHONPATH=src python benchmarks/compile_time.py --entries {a.entries} --dim {a.dim} "
        f"--cnr-epochs {a.cnr_epochs}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other engineers' jobs (load "
        f"average at the end {load_avg}: every number here is under contention), Python "
        f"{platform.python_version()}, jax {__import__('jax').__version__}, backend 'jax' on the CPU.",
        "",
        f"Input: the first {a.entries:,} entries of citeulike-a (5,551 x 16,980), d = {a.dim}, CG 3 steps. "
        "Each row is a fresh interpreter. compile = epoch 1 - median(epochs 2, 3); programs = XLA "
        "compilations logged (bucket programs, prologues, init); start = interpreter start to the end of "
        "epoch 1 (imports, packing, compiles).",
        "",
        "| n_buckets | widths (rows, cols) | fill (rows, cols) | cache | XLA programs (compiled or loaded) | compile (s) | "
        "start to epoch 1 done (s) | s/epoch |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]

    def line(nb, r, cache):
        label = "auto (0)" if nb == 0 else str(nb)
        return (
            f"| {label} | {r['widths'][0]}, {r['widths'][1]} | {r['fill'][0]:.2f}, {r['fill'][1]:.2f} | {cache} | "
            f"{r['programs']} | {r['compile_s']:.2f} | {r['to_first_epoch_s']:.2f} | {r['s_per_epoch']:.3f} |"
        )

    for nb, cold, warm in rows:
        lines += [line(nb, cold, "cold (empty folder)"), line(nb, warm, "warm (same folder)")]
    lines.append(line(0, off, "off (ALSX_CACHE_DIR='')"))
    lines += [
        "",
        f"## cnr-2000 (3,216,152 entries), d = {a.dim}: s/epoch before (10 buckets) and after (auto)",
        "",
        f"Both engines in one process, epochs alternated (one compile round, then {a.cnr_epochs} rounds), median:",
        "",
        "| n_buckets | widths (rows, cols) | fill (rows, cols) | s/epoch | epochs (s) |",
        "|---|---|---|---:|---|",
    ]
    for k in (10, 0):
        c = cnr[k]
        lines.append(
            f"| {'auto (0)' if k == 0 else k} | {c['widths'][0]}, {c['widths'][1]} | {c['fill'][0]:.3f}, "
            f"{c['fill'][1]:.3f} | {c['s_per_epoch']:.3f} | {', '.join(f'{t:.2f}' for t in c['epochs'])} |"
        )
    lines += [
        "",
        f"Tables after {a.cnr_epochs + 1} epochs differ by at most {cnr['max_abs_diff']:.1e} (same maths, "
        "different padding: float32 summation order).",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
