"""Benchmark-sized engine conformance: cnr-2000 at alsx's defaults, the cpu backend against jax.

For each --dims value, trains the whole of cnr-2000 (as `alsx train web_cnr2000.npz --split none
--dim D --epochs E --backend B`: alsx.model.ALS.fit on the ingested file, the CLI's defaults,
the loss after every epoch) once with the cpu backend (CpuEngine: the fused Numba CG kernel)
and once with jax (LocalEngine on one device, or ShardedEngine over --jax-devices emulated
devices as the CLI's default --cpu-devices gives), each in a child process of its own.
Reports the loss per epoch side by side, the relative difference per epoch and its maximum,
and whether anything was non-finite (a FloatingPointError from fit, or a non-finite table).

    python benchmarks/conformance.py                          # d=64 and d=256, 50 epochs
    python benchmarks/conformance.py --dims 64 --epochs 3     # a quick check
    python benchmarks/conformance.py --tiny                   # 20k-node part of cnr, 5 epochs, d=64

Writes benchmarks/results_conformance.md and benchmarks/results_conformance.jsonl (--out-prefix
changes both; a bare name such as results_conformance_d256 is put in benchmarks/), each with the
exact command, the machine and the date.

Tolerance (--rtol, default 1e-4) and what a miss at d=256 means.  Both backends run the same
iteration from the same start; benchmarks/conformance_f64.py puts each next to a float64
trajectory of it on cnr-2000 (results_conformance_f64_d256.md).  At the 'auto' defaults
(reg 3.6e-6) the rows are weakly regularised, and 3 warm-started CG steps amplify the rounding
of CG's own recurrences (r, p, alpha, beta) by a row's condition number: with those in float32
both backends were 1.1e-5 off float64 in loss after epoch 1 at d=256, and after epochs 2-7 the cpu
one 4.3e-5..8.7e-5 and the jax one 1.2e-4..2.2e-4 (their difference, up to 1.6e-4, is what this
script saw).
The CPU kernel now keeps CG's vectors in float64 (alsx.core.cpu_kernels): 5.6e-8 after epoch 1.
The JAX engine's CG is float32 throughout (JAX has no float64 without jax_enable_x64, and
accelerators none at speed), so at d=256 the cpu-vs-jax difference is the JAX engine's own
distance from float64, and that is what a d=256 'NO' reports (after the change: 3.7e-4 at epoch
19, the cpu engine on the float64 side of it); tests/test_engine_conformance.py
holds it as an expected failure (test_jax_cg_half_step_is_float64_close_under_weak_regularisation).
The tolerance is not loosened to hide it: 1e-4 stays the bound for two engines that both follow
float64 (d=64: 3.8e-5 with the float32 kernel), and the small-graph suite keeps each engine
within 2e-5 of the float64 trajectory over 30 epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import _common as C

ROOT = C.ROOT
FILE = "web_cnr2000.npz"


# ---------------------------------------------------------------------------- child
def load_training(path: str, max_nodes: int = 0):
    """The Interactions of ``path``; with ``max_nodes``, the induced subgraph on the first N ids
    (crawl order keeps it linked)."""
    from alsx.data.ingest import load_interactions

    data, _ = load_interactions(path)
    if max_nodes:
        n = max_nodes
        sub = data.select((data.rows < n) & (data.cols < n))
        data = dataclasses.replace(
            sub, shape=(min(n, data.shape[0]), min(n, data.shape[1])), row_vocab=None, col_vocab=None
        )
    return data


def default_hparams() -> dict:
    """The CLI's defaults of the fields that shape the iteration ('auto' weights unresolved)."""
    from alsx.config import DEFAULTS

    names = ("reg", "unobserved_weight", "nu", "solver", "cg_steps", "dtype", "seed", "init", "init_scale")
    return {k: DEFAULTS[k] for k in names}


def out_prefix(given: str) -> Path:
    """--out-prefix as a path: a bare name (no folder) goes into benchmarks/, like the default."""
    p = Path(given)
    return C.BENCH / p if not p.is_absolute() and p.parent == Path(".") else p


def train_one(cfg: dict) -> dict:
    """One fit: per-epoch losses and seconds, where it stopped and why, the tables' finiteness."""
    if cfg["backend"] == "jax":  # device count before jax is imported, as the CLI's --cpu-devices
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cfg['devices']}"
    import numpy as np

    from alsx.model import ALS

    data = load_training(cfg["data"], cfg.get("max_nodes", 0))
    hp = default_hparams()
    model = ALS(dim=cfg["dim"], epochs=cfg["epochs"], progress=False, backend=cfg["backend"], **hp)
    error = None
    t = time.perf_counter()
    try:
        model.fit(data)
    except FloatingPointError as exc:  # fit's own divergence check (loss or tables non-finite)
        error = str(exc)
    seconds = time.perf_counter() - t
    hist = model.history_
    finite_tables = None
    if error is None:
        finite_tables = bool(np.isfinite(model.row_embeddings_).all() and np.isfinite(model.col_embeddings_).all())
    import jax

    return {
        "backend": cfg["backend"],
        "dim": cfg["dim"],
        "epochs": cfg["epochs"],
        "engine": model.engine_name_,
        "jax_devices": jax.device_count(),
        "shape": list(data.shape),
        "nnz": int(data.nnz),
        "hparams": {**hp, **{k: getattr(model.hparams_, k) for k in ("reg", "unobserved_weight")}},  # 'auto' resolved
        "losses": [r["loss"]["total"] for r in hist],
        "epoch_seconds": [r["seconds"] for r in hist],
        "epochs_done": len(hist),
        "error": error,
        "finite_tables": finite_tables,
        "fit_seconds": seconds,
    }


# ---------------------------------------------------------------------------- parent
def machine() -> dict:
    model, cores = platform.processor() or platform.machine(), os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {"cpu": model, "cores": cores, "load_1min": round(load, 2), "python": platform.python_version()}


def run_child(cfg: dict) -> dict:
    import tempfile

    env = dict(os.environ)  # the child imports the same alsx
    env.pop("XLA_FLAGS", None)
    # A fresh Numba cache: the kernels compile in the child as on a user's first run (the cnr
    # divergence showed only with freshly compiled kernels, not with ones loaded from the cache).
    with tempfile.TemporaryDirectory(prefix="alsx-numba-") as cache:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(cfg)],
            env={**env, "NUMBA_CACHE_DIR": cache},
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise SystemExit(f"child {cfg} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(cpu: dict, jax: dict, rtol: float) -> dict:
    n = min(len(cpu["losses"]), len(jax["losses"]))
    rel = [
        abs(a - b) / abs(b) if math.isfinite(a) and math.isfinite(b) else float("inf")
        for a, b in zip(cpu["losses"][:n], jax["losses"][:n], strict=True)
    ]
    nonfinite = {
        r["backend"]: (
            r["error"] is not None or r["finite_tables"] is False or not all(math.isfinite(x) for x in r["losses"])
        )
        for r in (cpu, jax)
    }
    complete = cpu["epochs_done"] == cpu["epochs"] and jax["epochs_done"] == jax["epochs"]
    worst = max(rel) if rel else float("nan")
    return {
        "dim": cpu["dim"],
        "rel_diff": rel,
        "max_rel_diff": worst,
        "max_at_epoch": (rel.index(worst) + 1) if rel else None,
        "nonfinite": nonfinite,
        "agree": bool(complete and not any(nonfinite.values()) and worst <= rtol),
        "rtol": rtol,
    }


def fmt(x: float) -> str:
    return f"{x:.8g}" if math.isfinite(x) else str(x)


def report(header: dict, pairs: list[tuple[dict, dict, dict]]) -> str:
    part = f" (first {header['max_nodes']} nodes)" if header["max_nodes"] else ""
    hp = ", ".join(f"{k}={v}" for k, v in pairs[0][0]["hparams"].items()) if pairs else ""
    lines = [
        "# Engine conformance on cnr-2000: cpu backend vs jax backend",
        "",
        f"- Command: `{header['command']}`",
        f"- Date: {header['date']}; machine: {header['machine']['cpu']}, {header['machine']['cores']} cores, "
        f"load {header['machine']['load_1min']} at start; Python {header['machine']['python']}",
        f"- Data: `{header['data']}`{part}",
        "- Each backend as `alsx train DATA --split none --dim D --epochs E --backend B` at the CLI defaults "
        f"({hp}); the loss is the objective after each epoch (ALS.fit's history).",
        f"- Tolerance: relative loss difference <= {header['rtol']:g} at every epoch (see the docstring).",
        "",
        "| d | engines (cpu / jax) | epochs done | max rel. diff (epoch) | non-finite cpu / jax "
        "| s/epoch cpu / jax | agree |",
        "|---|---|---|---|---|---|---|",
    ]
    for cpu, jax, c in pairs:
        spe = [sum(r["epoch_seconds"][1:]) / max(len(r["epoch_seconds"]) - 1, 1) for r in (cpu, jax)]
        lines.append(
            f"| {c['dim']} | {cpu['engine']} / {jax['engine']} ({jax['jax_devices']} device(s)) | "
            f"{cpu['epochs_done']} / {jax['epochs_done']} of {cpu['epochs']} | {c['max_rel_diff']:.2e} "
            f"({c['max_at_epoch']}) | {c['nonfinite']['cpu']} / {c['nonfinite']['jax']} | "
            f"{spe[0]:.2f} / {spe[1]:.2f} | **{'yes' if c['agree'] else 'NO'}** |"
        )
        for r in (cpu, jax):
            if r["error"]:
                lines.append(f"|  | {r['backend']}: {r['error']} | | | | | |")
    for cpu, jax, c in pairs:
        lines += ["", f"## d={c['dim']}: loss per epoch", "", "| epoch | cpu | jax | rel. diff |", "|---|---|---|---|"]
        for e in range(max(len(cpu["losses"]), len(jax["losses"]))):
            a = cpu["losses"][e] if e < len(cpu["losses"]) else float("nan")
            b = jax["losses"][e] if e < len(jax["losses"]) else float("nan")
            d = c["rel_diff"][e] if e < len(c["rel_diff"]) else float("nan")
            lines.append(f"| {e + 1} | {fmt(a)} | {fmt(b)} | {d:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_data_arg(p)
    p.add_argument("--dims", default="64,256", help="comma-separated embedding dimensions (default %(default)s)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--backends", default="cpu,jax", help="which to run (both are needed for the comparison)")
    p.add_argument(
        "--jax-devices",
        type=int,
        default=0,
        help="emulated CPU devices for jax; 0: one per core up to 8, as `alsx train` (default)",
    )
    p.add_argument("--max-nodes", type=int, default=0, help="train on the subgraph of the first N nodes")
    p.add_argument("--tiny", action="store_true", help="quick check: --max-nodes 20000 --epochs 5 --dims 64")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results_conformance"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    C.use_data(a)
    if a.child:
        print(json.dumps(train_one(json.loads(a.child))))
        return 0
    if a.tiny:
        a.max_nodes, a.epochs, a.dims = a.max_nodes or 20000, 5, "64"
    data = C.data_file(FILE)
    devices = a.jax_devices or min(os.cpu_count() or 1, 8)
    header = {
        "command": "python "
        + " ".join(
            shlex.quote(x) for x in [os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv)
        ),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "data": os.path.relpath(data, ROOT),
        "max_nodes": a.max_nodes,
        "rtol": a.rtol,
    }
    backends = a.backends.split(",")
    pairs, records = [], [dict(header, kind="header")]
    for dim in (int(x) for x in a.dims.split(",")):
        got = {}
        for b in backends:
            cfg = {
                "backend": b,
                "dim": dim,
                "epochs": a.epochs,
                "data": str(data),
                "devices": devices,
                "max_nodes": a.max_nodes,
            }
            got[b] = run_child(cfg)
            records.append(dict(got[b], kind="run"))
            r = got[b]
            print(
                f"d={dim} {b}: {r['engine']}, {r['epochs_done']}/{a.epochs} epochs, last loss "
                f"{fmt(r['losses'][-1]) if r['losses'] else '-'}, error {r['error']}",
                file=sys.stderr,
            )
        if "cpu" in got and "jax" in got:
            c = compare(got["cpu"], got["jax"], a.rtol)
            records.append(dict(c, kind="comparison"))
            pairs.append((got["cpu"], got["jax"], c))
            print(
                f"d={dim}: max relative loss difference {c['max_rel_diff']:.2e} at epoch {c['max_at_epoch']}, "
                f"non-finite {c['nonfinite']}, agree {c['agree']}",
                file=sys.stderr,
            )
    prefix = out_prefix(a.out_prefix)
    with open(prefix.with_suffix(".jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    prefix.with_suffix(".md").write_text(report(header, pairs))
    print(f"wrote {prefix.with_suffix('.md')} and {prefix.with_suffix('.jsonl')}", file=sys.stderr)
    return 0 if all(c["agree"] for _, _, c in pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
