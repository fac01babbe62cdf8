"""Start-up of the JAX engine on small inputs: compile seconds, cold and warm cache, before and after.

    PYTHONPATH=src python benchmarks/compile_time.py [--entries 135000] [--dim 64] [--cnr-epochs 4]
        [--baseline REV] [--repeats 3]

Each measurement is a fresh child interpreter (nothing compiled in memory): it builds a
``LocalEngine`` (backend 'jax') on the first ``--entries`` entries of citeulike-a, draws the
initial tables, runs 3 epochs and two losses, and reports compile = epoch 1 - median(epochs 2, 3)
(the figure of issue 19), the seconds of the first ``init_state`` and of the first loss beyond
the second, and the XLA programs compiled or loaded with their seconds (``jax.monitoring``'s
trace, lowering and backend-compile events, by function).  Cold: an empty persistent cache
folder; warm: the same folder again.  "before" runs the code of git revision ``--baseline``
(extracted with ``git archive``), "after" this checkout; the cold auto-bucket runs of both are
repeated ``--repeats`` times, alternated, with the load average beside each.  Then cnr-2000:
s/epoch with the CPU compile options (``alsx.compile_cache.CPU_OPTIONS``) and with XLA's
defaults (``ALSX_XLA_CPU_OPTIONS=0``), epochs alternated in one process.
Writes benchmarks/results_compile.md (+ results_compile.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from _common import extract

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ALSX_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results_compile.md"
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


def load(name: str, entries: int | None):
    from alsx.data.matrix import coo_to_csr

    z = np.load(DATA / name, allow_pickle=False)
    n, m = (int(v) for v in z["shape"])
    r, c = z["rows"][:entries], z["cols"][:entries]
    v = np.ones(len(r), np.float32)
    return coo_to_csr(r, c, v, n, m), coo_to_csr(c, r, v, m, n)


def load_avg() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def child(n_buckets: int, entries: int, dim: int) -> dict:
    t0 = time.perf_counter()
    load_start = load_avg()
    import jax
    import jax.monitoring

    from alsx.config import HParams, Packing
    from alsx.core.backends import make_engine

    seconds: dict = defaultdict(float)
    programs: dict = defaultdict(lambda: [0, 0.0])  # fun_name -> [programs, backend-compile seconds]

    def listen(event, duration, **kw):
        if event in EVENTS:
            seconds[EVENTS[event]] += duration
            if EVENTS[event] == "compile":
                programs[kw.get("fun_name", "?")][0] += 1
                programs[kw.get("fun_name", "?")][1] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    rows, cols = load("citeulike_a.npz", entries)
    eng = make_engine(rows, cols, HParams(dim=dim), Packing(n_buckets=n_buckets), backend="jax")
    t = time.perf_counter()
    state = eng.init_state(0)
    jax.block_until_ready(state.w)
    init_s = time.perf_counter() - t
    init_programs = sum(p[0] for p in programs.values())
    times, cpu = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        state = eng.epoch(state)
        jax.block_until_ready(state.w)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if len(times) == 1:
            first_done = time.perf_counter() - t0
            epoch_programs = sum(p[0] for p in programs.values()) - init_programs
    losses = []
    for _ in range(2):
        t = time.perf_counter()
        eng.loss(state)
        losses.append(time.perf_counter() - t)
    later = float(np.median(times[1:]))
    return {
        "n_buckets": n_buckets,
        "widths": [len(eng.packed("rows")["blocks"]), len(eng.packed("cols")["blocks"])],
        "fill": [eng.stats.row_fill, eng.stats.col_fill],
        "epochs": times,
        "compile_s": times[0] - later,
        "compile_cpu_s": cpu[0] - float(np.median(cpu[1:])),
        "s_per_epoch": later,
        "init_s": init_s,
        "loss_compile_s": losses[0] - losses[1],
        "to_first_epoch_s": first_done,
        "epoch_programs": epoch_programs,
        "programs": sum(p[0] for p in programs.values()),
        "by_function": {k: v for k, v in sorted(programs.items(), key=lambda kv: -kv[1][1])},
        "seconds": dict(seconds),
        "load_start": load_start,
        "load_end": load_avg(),
    }


def run_child(n_buckets: int, entries: int, dim: int, cache: str, src: Path) -> dict:
    env = dict(os.environ, ALSX_CACHE_DIR=cache, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", str(n_buckets), "--entries", str(entries), "--dim", str(dim)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def cnr_epochs(epochs: int, dim: int) -> dict:
    """s/epoch on cnr-2000 with the CPU compile options and with XLA's defaults, alternated."""
    import jax

    from alsx.compile_cache import OPTIONS_ENV
    from alsx.config import HParams
    from alsx.core.engine import LocalEngine

    rows, cols = load("web_cnr2000.npz", None)
    eng = LocalEngine(rows, cols, HParams(dim=dim))
    variants = {"CPU options": None, "XLA defaults": "0"}
    states = {k: eng.init_state(0) for k in variants}
    times: dict = {k: [] for k in variants}
    cpu: dict = {k: [] for k in variants}
    for _ in range(epochs + 1):  # the first round compiles
        for k, flag in variants.items():
            os.environ.pop(OPTIONS_ENV, None) if flag is None else os.environ.__setitem__(OPTIONS_ENV, flag)
            t, c = time.perf_counter(), time.process_time()
            states[k] = eng.epoch(states[k])
            jax.block_until_ready(states[k].w)
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    os.environ.pop(OPTIONS_ENV, None)
    out = {"widths": [len(eng.packed("rows")["blocks"]), len(eng.packed("cols")["blocks"])], "load": load_avg()}
    for k in variants:
        med = float(np.median(times[k][1:]))
        out[k] = {
            "s_per_epoch": med,
            "cpu_per_epoch": float(np.median(cpu[k][1:])),
            "compile_s": times[k][0] - med,
            "epochs": times[k][1:],
        }
    wa, wb = (eng.to_numpy(states[k])[0] for k in variants)
    out["max_abs_diff"] = float(np.abs(wa - wb).max())
    return out


def line(label: str, r: dict, cache: str) -> str:
    nb = "auto (0)" if r["n_buckets"] == 0 else str(r["n_buckets"])
    return (
        f"| {label} | {nb} | {r['widths'][0]}, {r['widths'][1]} | {cache} | {r['epoch_programs']} / {r['programs']} | "
        f"**{r['compile_s']:.2f}** | {r['compile_cpu_s']:.2f} | {r['init_s']:.2f} | {r['loss_compile_s']:.2f} | {r['to_first_epoch_s']:.2f} | "
        f"{r['s_per_epoch']:.3f} | {r['load_start']} |"
    )


def report(a, rows: list, repeats: list, cnr: dict) -> list[str]:
    lines = [
        "# JAX engine start-up on a small input: compile seconds, before and after",
        "",
        f"Command: `PYTHONPATH=src python benchmarks/compile_time.py --entries {a.entries} --dim {a.dim} "
        f"--cnr-epochs {a.cnr_epochs} --baseline {a.baseline} --repeats {a.repeats}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other engineers' jobs (the load "
        f"average, 1 / 5 / 15 min, is written beside each row), Python {platform.python_version()}, jax "
        f"{__import__('jax').__version__}, backend 'jax' on the CPU. before = git revision `{a.baseline}`; after = "
        "this checkout (CPU programs compiled with LLVM -O1 and XLA's loop emitters, `alsx.compile_cache.CPU_OPTIONS`; "
        "the initial tables in one program; the loss's table terms in one program; the zero table inside the prologue).",
        "",
        f"Input: the first {a.entries:,} entries of citeulike-a (5,551 x 16,980), d = {a.dim}, CG 3 steps. Each row "
        "is a fresh interpreter. compile = epoch 1 - median(epochs 2, 3) (issue 19's figure); init = the first "
        "`init_state` (its compile included); loss = first loss - second loss; programs = XLA programs compiled or "
        "loaded in epoch 1 / in all (init, 3 epochs, 2 losses); compile, CPU = the same difference in CPU seconds of "
        "the process (less sensitive to the other jobs than wall seconds); start = interpreter start to the end of "
        "epoch 1.",
        "",
        "| code | n_buckets | widths (rows, cols) | cache | programs (epoch 1 / all) | compile (s) | compile, CPU (s) | init (s) | "
        "loss (s) | start to epoch 1 done (s) | s/epoch | load at start |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, _nb, cold, warm in rows:
        lines += [line(label, cold, "cold (empty folder)"), line(label, warm, "warm (same folder)")]
    lines += [
        "",
        f"## Cold, auto buckets: {a.repeats} alternated repeats of each",
        "",
        "| code | compile (s), each | median | compile, CPU (s), median | init + compile + loss (s), median "
        "| load at start of each |",
        "|---|---|---:|---:|---:|---|",
    ]
    for label in ("before", "after"):
        rs = [r for lab, r in repeats if lab == label]
        total = [r["init_s"] + r["compile_s"] + r["loss_compile_s"] for r in rs]
        each = [r["compile_s"] for r in rs]
        lines.append(
            f"| {label} | {', '.join(f'{c:.2f}' for c in each)} | **{np.median(each):.2f}** "
            f"| {np.median([r['compile_cpu_s'] for r in rs]):.2f} | {np.median(total):.2f} | {'; '.join(r['load_start'] for r in rs)} |"
        )
    lines += [
        "",
        "## Where the cold seconds go (auto buckets, first cold run of each)",
        "",
        "Backend-compile seconds by jitted function (XLA programs compiled, seconds summed), and the seconds "
        "JAX spent tracing and lowering to MLIR, over init, 3 epochs and 2 losses:",
        "",
        "| code | trace (s) | lower (s) | backend compile (s) | programs: function x count (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for label in ("before", "after"):
        r = next(r for lab, r in repeats if lab == label)
        fns = ", ".join(f"{k} x{n} ({s:.2f})" for k, (n, s) in r["by_function"].items())
        sec = r["seconds"]
        lines.append(
            f"| {label} | {sec.get('trace', 0):.2f} | {sec.get('lower', 0):.2f} | {sec.get('compile', 0):.2f} | {fns} |"
        )
    a_, b_ = cnr["CPU options"], cnr["XLA defaults"]
    lines += [
        "",
        f"## cnr-2000 (3,216,152 entries), d = {a.dim}: the CPU options against XLA's defaults",
        "",
        f"One engine (auto buckets: {cnr['widths'][0]}, {cnr['widths'][1]} widths), two states, epochs alternated "
        f"(one compile round, then {a.cnr_epochs} rounds); load average at the end {cnr['load']}:",
        "",
        "| programs compiled with | compile (s) | s/epoch (median) | CPU s/epoch (median) | epochs (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for k, c in (("CPU options", a_), ("XLA defaults (`ALSX_XLA_CPU_OPTIONS=0`)", b_)):
        lines.append(
            f"| {k} | {c['compile_s']:.2f} | {c['s_per_epoch']:.3f} | {c['cpu_per_epoch']:.3f} | "
            f"{', '.join(f'{t:.2f}' for t in c['epochs'])} |"
        )
    lines += [
        "",
        f"Tables after {a.cnr_epochs + 1} epochs differ by at most {cnr['max_abs_diff']:.1e} (same maths; "
        "float32 rounding of differently generated kernels).",
    ]
    return lines


def cold_only(a) -> None:
    """Cold starts of this checkout alone (auto buckets, an empty cache folder each), appended to results_compile.md
    and its jsonl: the figure to re-measure when the machine is quiet."""
    runs = []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as cache:
            runs.append(run_child(0, a.entries, a.dim, cache, ROOT / "src"))
        print("cold", runs[-1]["compile_s"], runs[-1]["load_start"], flush=True)
    with open(OUT.with_suffix(".jsonl"), "a") as f:
        for r in runs:
            f.write(json.dumps({"kind": "cold_only", "code": "after", **r}) + "\n")
    secs = sorted(r["compile_s"] for r in runs)
    lines = [
        "",
        f"### Cold starts of this checkout alone ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python benchmarks/compile_time.py --cold-only --entries {a.entries} --dim {a.dim} "
        f"--repeats {a.repeats}`; compile seconds "
        + ", ".join(f"{r['compile_s']:.2f} (load {r['load_start']})" for r in runs)
        + f"; median **{secs[len(secs) // 2]:.2f} s** (goal <= 3 s).",
        "",
    ]
    with open(OUT, "a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=135_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--cnr-epochs", type=int, default=4)
    ap.add_argument("--baseline", default="8f97f5e", help="git revision measured as 'before'")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", type=int, default=None)
    ap.add_argument(
        "--cold-only", action="store_true", help="only --repeats cold runs of this checkout, appended to the report"
    )
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.entries, a.dim)))
        return
    if a.cold_only:
        cold_only(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        srcs = {"before": extract(a.baseline, tmp), "after": ROOT / "src"}
        repeats = []
        for _ in range(a.repeats):
            for label, src in srcs.items():
                with tempfile.TemporaryDirectory() as cache:
                    repeats.append((label, run_child(0, a.entries, a.dim, cache, src)))
                print(label, "cold", repeats[-1][1]["compile_s"], repeats[-1][1]["load_start"], flush=True)
        rows = []
        for nb in (10, 0):
            for label, src in srcs.items():
                with tempfile.TemporaryDirectory() as cache:
                    cold = run_child(nb, a.entries, a.dim, cache, src)
                    warm = run_child(nb, a.entries, a.dim, cache, src)
                rows.append((label, nb, cold, warm))
                print(label, nb, cold["compile_s"], warm["compile_s"], flush=True)
    cnr = cnr_epochs(a.cnr_epochs, a.dim)
    with open(OUT.with_suffix(".jsonl"), "w") as f:
        for label, r in repeats:
            f.write(json.dumps({"kind": "cold_repeat", "code": label, **r}) + "\n")
        for label, _nb, cold, warm in rows:
            f.write(json.dumps({"kind": "cold", "code": label, **cold}) + "\n")
            f.write(json.dumps({"kind": "warm", "code": label, **warm}) + "\n")
        f.write(json.dumps({"kind": "cnr", **cnr}) + "\n")
    OUT.write_text("\n".join(report(a, rows, repeats, cnr)) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
