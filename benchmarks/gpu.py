"""The JAX engine on one accelerator: compile, s/epoch, memory, bytes/s and FLOP/s vs the device's peaks.

    python benchmarks/gpu.py --out DIR [--tiny] [--budget-s 330] [--epochs 5]

Data (generated here, seeded): ``ml20m`` a power-law 138,493 x 26,744 matrix with 20M distinct
entries (the shape of MovieLens-20M); ``web100m`` a synthetic web graph of 5M nodes / 100M
arcs (:mod:`alsx.webgraph.synthetic`), trained untied and tied; ``gowalla`` from the data
folder when present.  Runs: d in {64, 128, 256, 1024}, float32 and bfloat16 tables, CG (3
steps), iALS++ ('block') and Cholesky at d <= 256, most important first (the issue-19 goals:
ml20m and web100m at d=128), so ``--budget-s`` cuts the least important ones; skipped runs
are listed in the table.  ``--tiny`` runs the same code at toy sizes on the CPU (CI).

Each run is a child interpreter (its own peak device memory; a crash or out-of-memory run
does not end the benchmark); ``--tiny`` calls the same child code in-process (no device
memory to isolate on the CPU, and CI time), so its later runs reuse programs of the same
shapes (the prologues, the initialisation).  Per run: compile seconds = epoch 1 - median(epochs 2..E)
(the first epoch compiles every bucket program; the persistent compilation cache is off),
s/epoch = median of epochs 2..E, peak device memory = ``device.memory_stats()
['peak_bytes_in_use']`` (n/a where the backend has none, e.g. the CPU).

Bytes and FLOPs one epoch must move / do, from the packed shapes (per half-step; both
half-steps summed).  P = padded entries of the side (stored + padding), R = rows solved,
C = rows of the fixed table, d = dim, s = table bytes per value (4 f32, 2 bf16), k = CG
steps, b = iALS++ block width:

* bytes  = P (d s + 8)        gather each entry's fixed row once + its int32 id + f32 confidence
         + 2 R d s             read the warm start, write the solution
         + C d s               read the fixed table once for its Gramian
* FLOPs, CG:       4 P d (k + 1)           residual + k matvecs: dot and axpy of d per entry
                 + 2 R d^2 (k + 1)         the shared (alpha0 G + lambda) x per row
                 + 2 C d^2                 Gramian
* FLOPs, Cholesky: 2 P d^2 + 2 P d + R (d^3 / 3 + 2 d^2 + d^2) + 2 C d^2   (A, b, factor, solves, G)
* FLOPs, iALS++:   (d / b) (2 P d + 2 P b^2 + 2 P b + R (b^3 / 3 + 2 d b)) + 2 C d^2
                   (each block recomputes the scores, forms its b x b system and solves it)

Achieved GB/s = bytes / (s/epoch), GFLOP/s = FLOPs / (s/epoch); the fractions are of the
device's peaks in ``PEAKS`` (copy bandwidth; float32 vector FLOP/s, since the normal
equations are float32 whatever the table dtype: bfloat16 tables halve the gathered bytes,
not the arithmetic).  n/a on devices not in the table (the CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(
    os.environ.get("ALSX_DATA")
    or next(
        (p for p in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data") if p.is_dir()),
        ROOT.parent / "shared" / "data",
    )
)

# Peak copy bandwidth (bytes/s), float32 and bfloat16 matrix FLOP/s by device kind (substring
# of jax's device_kind, first match wins). H200/H100 SXM: published HBM bandwidth x ~0.9 for a
# copy, FP32 (non-tensor) ~60-67 TFLOP/s, BF16 dense tensor ~790-990 TFLOP/s.
PEAKS = {
    "H200": {"bytes_s": 4.3e12, "f32_flop_s": 60e12, "bf16_flop_s": 790e12},
    "H100": {"bytes_s": 3.0e12, "f32_flop_s": 60e12, "bf16_flop_s": 790e12},
    "A100": {"bytes_s": 1.8e12, "f32_flop_s": 19.5e12, "bf16_flop_s": 312e12},
}

FULL = {
    "ml20m": {"kind": "powerlaw", "n_rows": 138_493, "n_cols": 26_744, "nnz": 20_000_000},
    "web100m": {"kind": "web", "n_nodes": 5_000_000, "n_edges": 100_000_000},
}
TINY = {
    "ml20m": {"kind": "powerlaw", "n_rows": 1_385, "n_cols": 267, "nnz": 20_000},
    "web100m": {"kind": "web", "n_nodes": 5_000, "n_edges": 40_000},
}


def plan_runs(tiny: bool, datasets: list[str]) -> list[dict]:
    """Runs in priority order: (data, tied, dim, dtype, solver)."""
    if tiny:  # every code path once, at toy sizes
        runs = [
            ("ml20m", False, 16, "float32", "cg"),
            ("web100m", False, 16, "float32", "cg"),
            ("web100m", True, 16, "float32", "cg"),
            ("ml20m", False, 16, "bfloat16", "block"),
            ("ml20m", False, 8, "float32", "cholesky"),
        ]
    else:
        runs = [
            ("ml20m", False, 128, "float32", "cg"),
            ("web100m", False, 128, "float32", "cg"),
            ("web100m", True, 128, "float32", "cg"),
            ("ml20m", False, 128, "bfloat16", "cg"),
            ("web100m", False, 128, "bfloat16", "cg"),
            ("ml20m", False, 128, "float32", "block"),
            ("ml20m", False, 128, "float32", "cholesky"),
        ]
        for d in (64, 256, 1024):
            runs += [("ml20m", False, d, "float32", "cg"), ("ml20m", False, d, "bfloat16", "cg")]
        runs += [("ml20m", False, d, "float32", s) for d in (64, 256) for s in ("block", "cholesky")]
        runs += [("web100m", False, d, "float32", "cg") for d in (64, 256)]
        runs += [("gowalla", False, d, "float32", "cg") for d in (64, 128, 256)]
        runs += [("ml20m", False, 128, "bfloat16", s) for s in ("block", "cholesky")]
        runs += [("web100m", False, 1024, "float32", "cg")]
    keys = ("data", "tied", "dim", "dtype", "solver")
    return [dict(zip(keys, r)) for r in runs if r[0] in datasets]


# ---------------------------------------------------------------------------- data


def _powerlaw(n: int, size: int, rng, perm) -> np.ndarray:
    p = (np.arange(n, dtype=np.float64) + 10.0) ** -0.8
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return perm[np.searchsorted(cdf, rng.random(size), side="right").clip(0, n - 1)].astype(np.int64)


def make_keys(spec: dict, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """Sorted distinct int64 keys row * n_cols + col of a data set, and its shape."""
    if spec["kind"] == "web":
        from alsx.webgraph.synthetic import SynthSpec, synth_edge_chunks

        n = spec["n_nodes"]
        parts = [s.astype(np.int64) * n + d for s, d in synth_edge_chunks(SynthSpec(n, spec["n_edges"], seed=seed))]
        return np.unique(np.concatenate(parts)), n, n
    n, m, nnz = spec["n_rows"], spec["n_cols"], spec["nnz"]
    rng = np.random.default_rng(seed)
    prow, pcol = rng.permutation(n), rng.permutation(m)
    keys = np.empty(0, np.int64)
    while keys.size < nnz:  # top up until nnz distinct pairs (a power law repeats its heads)
        want = int((nnz - keys.size) * 1.2) + 1000
        keys = np.unique(np.concatenate([keys, _powerlaw(n, want, rng, prow) * m + _powerlaw(m, want, rng, pcol)]))
    return np.sort(rng.permutation(keys)[:nnz]), n, m


def write_data(name: str, spec: dict | None, folder: Path) -> Path:
    """Both CSRs of a data set as an uncompressed .npz the children map (generated or from DATA)."""
    if spec is None:  # gowalla: the real file
        z = np.load(DATA / "gowalla_lightgcn.npz", allow_pickle=False)
        n, m = (int(v) for v in z["shape"])
        keys = np.unique(z["rows"].astype(np.int64) * m + z["cols"])
    else:
        keys, n, m = make_keys(spec)
    r, c = keys // m, keys % m
    t = np.sort(c * n + r)
    path = folder / f"{name}.npz"
    np.savez(
        path,
        shape=np.array([n, m]),
        row_ptr=np.searchsorted(r, np.arange(n + 1)).astype(np.int64),
        row_idx=c.astype(np.int32),
        col_ptr=np.searchsorted(t // n, np.arange(m + 1)).astype(np.int64),
        col_idx=(t % n).astype(np.int32),
    )
    return path


# ---------------------------------------------------------------------------- cost formulas


def side_cost(
    padded: int, n_rows: int, n_fixed: int, d: int, isz: int, solver: str, cg_steps: int, block: int
) -> tuple[float, float]:
    """(bytes, FLOPs) one half-step must move / do (the formulas of the module docstring)."""
    p, r, c = float(padded), float(n_rows), float(n_fixed)
    nbytes = p * (d * isz + 8) + 2 * r * d * isz + c * d * isz
    gram = 2 * c * d * d
    if solver == "cg":
        flops = 4 * p * d * (cg_steps + 1) + 2 * r * d * d * (cg_steps + 1) + gram
    elif solver == "cholesky":
        flops = 2 * p * d * d + 2 * p * d + r * (d**3 / 3 + 3 * d * d) + gram
    else:
        flops = (d / block) * (2 * p * d + 2 * p * block**2 + 2 * p * block + r * (block**3 / 3 + 2 * d * block)) + gram
    return nbytes, flops


def padded_entries(side: dict) -> int:
    """Stored + padding entries of a packed side (PackedSide.arrays() layout)."""
    total = sum(int(np.prod(b[0].shape)) for b in side["blocks"])
    return total + (0 if side["long"] is None else int(np.prod(side["long"][0].shape)))


# ---------------------------------------------------------------------------- child: one run


def child(run: dict, path: str, epochs: int) -> dict:
    import jax

    from alsx.config import HParams, Packing
    from alsx.core.engine import LocalEngine
    from alsx.data.matrix import CSR

    z = np.load(path, mmap_mode="r", allow_pickle=False)
    n, m = (int(v) for v in z["shape"])
    rows = CSR(np.asarray(z["row_ptr"]), np.asarray(z["row_idx"]), np.ones(len(z["row_idx"]), np.float32), m)
    cols = CSR(np.asarray(z["col_ptr"]), np.asarray(z["col_idx"]), np.ones(len(z["col_idx"]), np.float32), n)
    hp = HParams(dim=run["dim"], solver=run["solver"], cg_steps=3, dtype=run["dtype"])
    t = time.perf_counter()
    eng = LocalEngine(rows, cols, hp, Packing(n_buckets=run.get("n_buckets", 0)), tied=run["tied"])
    pack_s = time.perf_counter() - t
    state = eng.init_state(0)
    jax.block_until_ready(state.w)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        state = eng.epoch(state)
        jax.block_until_ready((state.w, state.h))
        times.append(time.perf_counter() - t)
    w = np.asarray(state.w[: min(n, 1000)].astype("float32"))
    if not np.isfinite(w).all():
        raise FloatingPointError("non-finite table after training")
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    isz = 2 if hp.dtype == "bfloat16" else 4
    bs = hp.block_width("jax")
    cost = [
        side_cost(padded_entries(eng.packed("rows")), n, m, hp.dim, isz, hp.solver, 3, bs),
        side_cost(padded_entries(eng.packed("cols")), m, n, hp.dim, isz, hp.solver, 3, bs),
    ]
    later = float(np.median(times[1:]))
    return {
        **run,
        "n_rows": n,
        "n_cols": m,
        "nnz": int(rows.nnz),
        "device": dev.device_kind,
        "platform": dev.platform,
        "pack_s": pack_s,
        "epoch_s": times,
        "s_per_epoch": later,
        "compile_s": max(times[0] - later, 0.0),
        "fill": [eng.stats.row_fill, eng.stats.col_fill],
        "peak_bytes": None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None,
        "bytes": sum(c[0] for c in cost),
        "flops": sum(c[1] for c in cost),
    }


# ---------------------------------------------------------------------------- parent


def rates(rec: dict) -> dict:
    """Achieved bytes/s and FLOP/s and their fractions of the device's peaks (None when unknown)."""
    peak = next((v for k, v in PEAKS.items() if k in rec.get("device", "")), None)
    bw, fl = rec["bytes"] / rec["s_per_epoch"], rec["flops"] / rec["s_per_epoch"]
    return {
        "bytes_s": bw,
        "flop_s": fl,
        "frac_bytes": bw / peak["bytes_s"] if peak else None,
        "frac_flops": fl / peak["f32_flop_s"] if peak else None,
    }


def run_one(run: dict, path: Path, epochs: int, timeout: float, in_process: bool = False) -> dict:
    if in_process:  # --tiny: the same child code without an interpreter per run (CI time)
        os.environ["ALSX_CACHE_DIR"] = ""
        try:
            rec = child(run, str(path), epochs)
        except Exception as e:  # noqa: BLE001 - a failed run is a row of the table
            return {**run, "status": f"failed: {type(e).__name__}: {e}"[:200]}
        return {**rec, **rates(rec), "status": "ok"}
    env = dict(os.environ, ALSX_CACHE_DIR="")  # compile seconds are cold-cache seconds
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", json.dumps(run), "--child-data", str(path), "--epochs", str(epochs)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {**run, "status": f"stopped after {timeout:.0f} s (budget)"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {**run, "status": f"failed (rc {p.returncode}): {tail}"}
    rec = json.loads(lines[-1])
    return {**rec, **rates(rec), "status": "ok"}


def fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_tables(out: Path, recs: list[dict], meta: dict) -> None:
    (out / "gpu_results.json").write_text(json.dumps({"meta": meta, "runs": recs}, indent=1))
    lines = [
        f"# JAX engine on {meta['device']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; jax {meta['jax']}; budget {meta['budget_s']:.0f} s, "
        f"used {meta['elapsed_s']:.0f} s; data generation {meta['data_s']:.1f} s.",
        "",
        "| data | tied | d | dtype | solver | nnz | compile (s) | s/epoch | peak mem (GiB) | GB/epoch | "
        "GFLOP/epoch | GB/s | GFLOP/s | % peak bytes/s | % peak f32 FLOP/s | status |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in recs:
        ok = r["status"] == "ok"
        pb = r.get("peak_bytes")
        cells = [
            r["data"],
            "yes" if r["tied"] else "no",
            str(r["dim"]),
            r["dtype"],
            r["solver"],
            f"{r['nnz']:,}" if ok else "",
            fmt(r.get("compile_s")) if ok else "",
            fmt(r.get("s_per_epoch"), ".4g") if ok else "",
            fmt(pb / 2**30 if pb else None) if ok else "",
            fmt(r["bytes"] / 1e9) if ok else "",
            fmt(r["flops"] / 1e9) if ok else "",
            fmt(r["bytes_s"] / 1e9) if ok else "",
            fmt(r["flop_s"] / 1e9) if ok else "",
            fmt(100 * r["frac_bytes"] if ok and r["frac_bytes"] is not None else None, ".1f") if ok else "",
            fmt(100 * r["frac_flops"] if ok and r["frac_flops"] is not None else None, ".1f") if ok else "",
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "compile = epoch 1 - median(epochs 2..E), cold persistent cache; s/epoch = median of epochs "
        "2..E; bytes and FLOPs per epoch from the packed shapes (formulas in benchmarks/gpu.py); "
        "fractions of the device's peak copy bandwidth and float32 FLOP/s (the normal equations are "
        "float32 for bfloat16 tables too); n/a where the device has no entry in PEAKS or no memory_stats.",
    ]
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for gpu_results.json / gpu_results.md")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (CI)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting runs after this many seconds")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (>= 2; default 5, tiny 3)")
    ap.add_argument("--data", nargs="+", default=["ml20m", "web100m", "gowalla"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    epochs = max(2, a.epochs or (3 if a.tiny else 5))
    if a.child:
        print(json.dumps(child(json.loads(a.child), a.child_data, epochs)), flush=True)
        return
    if a.out is None:
        ap.error("--out is required")
    t0 = time.perf_counter()
    budget = a.budget_s if a.budget_s is not None else (100.0 if a.tiny else 330.0)
    out = a.out
    (out / "data").mkdir(parents=True, exist_ok=True)
    specs = TINY if a.tiny else FULL
    names = [n for n in a.data if n in specs or (n == "gowalla" and (DATA / "gowalla_lightgcn.npz").exists())]
    runs = plan_runs(a.tiny, names)
    paths: dict[str, Path] = {}
    data_s = 0.0
    recs = []
    for i, run in enumerate(runs):
        left = budget - (time.perf_counter() - t0)
        if left < 5:
            recs += [{**r, "status": "skipped (budget)"} for r in runs[i:]]
            break
        if run["data"] not in paths:  # generated when first needed: the first runs start early
            t = time.perf_counter()
            paths[run["data"]] = write_data(run["data"], specs.get(run["data"]), out / "data")
            data_s += time.perf_counter() - t
            left = budget - (time.perf_counter() - t0)
        rec = run_one(run, paths[run["data"]], epochs, max(left, 1.0), in_process=a.tiny)
        print(f"[gpu.py] {run} -> {rec['status']} {fmt(rec.get('s_per_epoch'))} s/epoch", flush=True)
        recs.append(rec)
    from importlib.metadata import version

    device = next((r["device"] for r in recs if r.get("device")), "unknown device (no run finished)")
    meta = {
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:]),
        "device": device,
        "jax": version("jax"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "budget_s": budget,
        "elapsed_s": time.perf_counter() - t0,
        "data_s": data_s,
        "missing": [n for n in a.data if n not in names],
    }
    write_tables(out, recs, meta)
    for p in paths.values():
        p.unlink()
    print(f"[gpu.py] wrote {out / 'gpu_results.md'}", flush=True)


if __name__ == "__main__":
    main()
