"""Cost model of the sharded JAX engine up to ALX's WebGraph sizes, checked against compiled programs.

    PYTHONPATH=src python benchmarks/cost_model.py [--devices 1 2 4 8] [--synth-edges 10000000] [--report-only]

1. Measure (one child interpreter per device count P, ``--xla_force_host_platform_device_count=P``
   set before jax is imported): build a ``ShardedEngine`` at d = 128 on cnr-2000 and on a
   synthetic web graph, compile its epoch program without running it
   (``lower().compile().memory_analysis()``: argument + output + temp - alias bytes per device)
   and read ``ShardedEngine.traffic()`` (all-to-all and ALX all-gather bytes per device per
   epoch) and the packing (padded entries per device).  Saved to cost_model_measured.json.
2. Model, from sizes alone (n_rows, n_cols, nnz, d, P) plus four graph parameters measured at
   P = 1 (fill = stored / padded entries; u = all-to-all rows per padded entry, i.e. the
   distinct rows a batch fetches per entry it holds, long rows once per pass; rho = ALX's
   gathered entries per padded entry, passes included; beta = packed bytes per padded entry):

   * memory per device: 3 (n_rows + n_cols) / P d s (the epoch program's input tables, output
     tables and the update being built: it donates nothing) + beta (nnz / fill) / P + one
     batch in flight (``alsx.plan.estimate``'s exchange, solver and Gramian components);
   * all-to-all bytes per device per epoch: 2 (nnz / fill) / P x u x d x s x
     (1 + sqrt(2 ln P x P / (u E))): the P = 1 volume split over P devices, times the
     expected excess of the busiest owner among P (the max of P binomials of mean u E / P,
     E = entries per batch), which sets the capacity K every owner pads to;
   * ALX all-gather + psum per device per epoch: 2 (nnz / fill) rho (4 + 4 d), flat in P;
   * compute per epoch: the half-step bytes and FLOPs of benchmarks/gpu.py over the
     device's peaks at an assumed efficiency; communication: crossing bytes over a stated
     link bandwidth.
3. Validate 2 against 1 (table, |error| <= 25 % asked) and project to ALX's WebGraph variants.
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
DATA = Path(os.environ.get("ALSX_DATA", ROOT.parent / "shared" / "data"))
MEASURED = ROOT / "benchmarks" / "cost_model_measured.json"
REPORT = ROOT / "benchmarks" / "COST_MODEL.md"
DIM = 128

# ALX's WebGraph variants (nodes, edges): TFDS catalog "web_graph" (arXiv 2112.02194), Common Crawl 2021.
WEBGRAPH = {
    "in-dense": (0.5e6, 0.12e9),
    "in-sparse": (1.5e6, 0.14e9),
    "de-dense": (5.7e6, 0.82e9),
    "de-sparse": (19.7e6, 1.19e9),
    "dense": (136.5e6, 22e9),
    "sparse": (365.4e6, 30e9),
}
# Devices: memory (bytes), copy bandwidth (bytes/s), float32 FLOP/s, link bandwidth for the
# exchange (bytes/s per device), efficiency assumed for the half-step (issue 19's 30 % goal).
DEVICES = {
    "H200": {
        "mem": 139 * 2**30,
        "bytes_s": 4.3e12,
        "flop_s": 60e12,
        "eff": 0.3,
        "link": {"in_node": 450e9, "across": 50e9},
        "per_node": 8,
    },
    "TPU-v3 core": {
        "mem": 16 * 2**30,
        "bytes_s": 450e9,
        "flop_s": 10e12,
        "eff": 0.3,
        "link": {"in_node": 25e9, "across": 25e9},
        "per_node": 8,
    },
}


# ---------------------------------------------------------------------------- measure (child)


def load_graph(name: str, synth_edges: int):
    from alsx.data.matrix import coo_to_csr

    if name == "cnr":
        z = np.load(DATA / "web_cnr2000.npz", allow_pickle=False)
        n = int(z["shape"][0])
        r, c = z["rows"], z["cols"]
    else:
        from alsx.webgraph.synthetic import SynthSpec, synth_edge_chunks

        n = synth_edges // 20  # web100m's 20 arcs per node
        keys = np.unique(
            np.concatenate(
                [s.astype(np.int64) * n + d for s, d in synth_edge_chunks(SynthSpec(n, synth_edges, seed=0))]
            )
        )
        r, c = keys // n, keys % n
    v = np.ones(len(r), np.float32)
    return coo_to_csr(r, c, v, n, n), coo_to_csr(c, r, v, n, n)


def child(name: str, synth_edges: int) -> dict:
    import jax

    from alsx.config import HParams, Packing
    from alsx.core.sharded import ShardedEngine

    rows, cols = load_graph(name, synth_edges)
    hp = HParams(dim=DIM)
    t = time.perf_counter()
    eng = ShardedEngine(rows, cols, hp, Packing(), check_memory=False)
    pack_s = time.perf_counter() - t
    state = eng.init_state(0)
    t = time.perf_counter()
    ma = eng.lower_epoch(state).compile().memory_analysis()
    compile_s = time.perf_counter() - t
    padded = 0
    for shape in eng.shapes:
        padded += sum(nb * s * w for nb, s, w in zip(shape.n_batches, shape.per_batch, shape.widths))
        if shape.long is not None:
            padded += shape.long[1] * shape.long[2] * shape.width
    mem = {
        k: int(getattr(ma, k + "_in_bytes"))
        for k in ("argument_size", "output_size", "temp_size", "alias_size", "generated_code_size")
    }
    return {
        "graph": name,
        "P": jax.device_count(),
        "n": rows.n_rows,
        "nnz": rows.nnz,
        "dim": DIM,
        "padded_per_device": padded,
        "traffic": eng.traffic(),
        "memory": mem,
        "device_bytes": mem["argument_size"] + mem["output_size"] + mem["temp_size"] - mem["alias_size"],
        "entries": Packing().entries_for(DIM),
        "pack_s": pack_s,
        "compile_s": compile_s,
        "imbalance": list(eng.stats.imbalance()),
    }


def measure(graphs: list[str], devices: list[int], synth_edges: int, resume: bool) -> list[dict]:
    """Measures every (graph, P), saving after each; ``resume`` keeps the saved ones."""
    out = json.loads(MEASURED.read_text()) if resume and MEASURED.exists() else []
    for g in graphs:
        label = g if g == "cnr" else f"synth{synth_edges // 10**6}M"
        for p in devices:
            if any(r["graph"] == label and r["P"] == p for r in out):
                continue
            env = dict(
                os.environ,
                XLA_FLAGS=f"--xla_force_host_platform_device_count={p}",
                JAX_PLATFORMS="cpu",
                ALSX_CACHE_DIR="",
            )
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
            t = time.perf_counter()
            r = subprocess.run(
                [sys.executable, __file__, "--child", g, "--synth-edges", str(synth_edges)],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if r.returncode:
                raise RuntimeError(f"{g} P={p}: {r.stderr[-1500:]}")
            rec = {**json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]), "graph": label}
            out.append(rec)
            MEASURED.write_text(json.dumps(out, indent=1))
            print(
                f"[cost_model] {label} P={p}: {rec['device_bytes'] / 2**20:.0f} MiB/device, "
                f"a2a {rec['traffic']['all_to_all'] / 2**20:.0f} MiB ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    return out


# ---------------------------------------------------------------------------- model


def memory_model(n_rows: float, n_cols: float, nnz: float, P: int, fill: float, beta: float, isz: int = 4) -> float:
    """Predicted bytes per device: 3 table sets + beta bytes per padded entry + one batch's buffers.

    The compiled epoch holds its input tables, its output tables and the update being built
    (it donates nothing: alias 0), so 3 (n_rows + n_cols) / P d s; the packed batches are
    ``beta`` bytes per padded entry (positions, confidences, row ids, serve lists; measured
    at P = 1); one batch in flight is ``alsx.plan.estimate``'s exchange + solver + Gramian.
    """
    from alsx.config import HParams, Packing
    from alsx.plan import estimate

    tables = (math.ceil(n_rows / P) + math.ceil(n_cols / P)) * DIM * isz
    hp = HParams(dim=DIM, dtype="float32" if isz == 4 else "bfloat16")
    c = estimate(int(n_rows), int(n_cols), int(nnz), hp, Packing(), n_devices=P, fill=fill).components
    return 3 * tables + beta * 2 * nnz / fill / P + c["exchange"] + c["solver"] + c["gramian"]


def a2a_model(nnz: float, P: int, fill: float, u: float, entries: int, isz: int = 4) -> float:
    """Predicted all-to-all result bytes per device per epoch (both sides), the own block included."""
    base = 2 * nnz / fill / P * u * DIM * isz
    return base * (1 + math.sqrt(2 * math.log(P) * P / (u * entries))) if P > 1 else base


def alx_model(nnz: float, fill: float, rho: float) -> float:
    """ALX: all-gather of the batch ids + psum of the masked float32 rows, per device per epoch.

    Every padded entry's id and d float32 values, ``rho`` times (long rows are gathered once
    per pass over their normal equations), whatever P: flat in the device count.
    """
    return 2 * nnz / fill * rho * (4 + 4 * DIM)


def graph_params(recs: list[dict], graph: str) -> dict:
    """The graph's measured parameters at P = 1: fill, u, rho, beta (see the module docstring)."""
    ones = [x for x in recs if x["P"] == 1]
    # A graph measured only at P > 1 is predicted from the largest synthetic graph measured at P = 1.
    r = next((x for x in ones if x["graph"] == graph), None) or max(
        (x for x in ones if x["graph"].startswith("synth")), key=lambda x: x["nnz"]
    )
    padded, t = r["padded_per_device"], r["traffic"]
    tables = 2 * r["n"] * DIM * 4
    return {
        "fill": 2 * r["nnz"] / padded,
        "u": t["all_to_all"] / (padded * DIM * 4),
        "rho": (t["alx_all_gather"] + t["alx_all_reduce"]) / (padded * (4 + 4 * DIM)),
        "beta": (r["memory"]["argument_size"] - tables) / padded,
        "entries": r["entries"],
    }


def gpu_formulas():
    """benchmarks/gpu.py as a module (its half-step bytes and FLOPs are the ones used here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("alsx_gpu_bench", ROOT / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def epoch_time(dev: dict, nnz: float, n: float, P: int, fill: float, u: float, rho: float, entries: int) -> dict:
    """Compute and communication seconds per epoch on P devices of kind ``dev`` (float32 tables, CG 3)."""
    b, f = gpu_formulas().side_cost(nnz / fill / P, n / P, n / P, DIM, 4, "cg", 3, 0)  # local Gramian, then psum
    compute = 2 * max(b / dev["bytes_s"], f / dev["flop_s"]) / dev["eff"]
    a2a = a2a_model(nnz, P, fill, u, entries) * (P - 1) / P
    alx = alx_model(nnz, fill, rho) * 2 * (P - 1) / P  # ring psum: reduce-scatter + all-gather
    across = 0.0 if P <= dev["per_node"] else (P - dev["per_node"]) / P
    bw = 1 / ((1 - across) / dev["link"]["in_node"] + across / dev["link"]["across"]) if P > 1 else float("inf")
    return {
        "compute": compute,
        "a2a": a2a / bw if P > 1 else 0.0,
        "alx": alx / bw if P > 1 else 0.0,
        "a2a_bytes": a2a,
        "alx_bytes": alx,
    }


# ---------------------------------------------------------------------------- report


def gib(x: float) -> str:
    return f"{x / 2**30:,.2f}"


def report(recs: list[dict], args) -> str:
    lines = [
        "# Cost model: the sharded JAX engine from cnr-2000 to WebGraph-sparse",
        "",
        "Commands (each later one adds to the saved measurements): "
        + "; ".join(
            f"`PYTHONPATH=src python benchmarks/cost_model.py --devices "
            f"{' '.join(str(r['P']) for r in recs if r['graph'] == g)} --graphs "
            f"{'cnr synth' if g == 'synth10M' else 'synth'} --synth-edges {int(g[5:-1]) * 10**6} --resume`"
            for g in dict.fromkeys(r["graph"] for r in recs if r["graph"].startswith("synth"))
        ),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other engineers' jobs, Python "
        f"{platform.python_version()}, jax {__import__('jax').__version__}; P devices emulated with "
        "`--xla_force_host_platform_device_count=P` (one child per P). Measurements are compile-only "
        "(`lower().compile().memory_analysis()`, `ShardedEngine.traffic()`): no epoch is run, so the "
        "contention of the shared machine does not change them.",
        "",
        "Model, inputs and formulas: see the docstring of `benchmarks/cost_model.py`. d = 128, float32 tables, "
        "CG 3 steps, default `Packing()`.",
        "",
        "## 1. Validation: model vs compiled programs",
        "",
        "| graph | nnz | P | fill | u | rho | beta (B/entry) | memory measured (GiB) | model (GiB) | error | all-to-all measured (GiB) | "
        "model (GiB) | error | ALX measured (GiB) | model (GiB) | error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for r in recs:
        gp = graph_params(recs, r["graph"])
        mem = memory_model(r["n"], r["n"], r["nnz"], r["P"], gp["fill"], gp["beta"])
        a2a = a2a_model(r["nnz"], r["P"], gp["fill"], gp["u"], gp["entries"])
        alx = alx_model(r["nnz"], gp["fill"], gp["rho"])
        t = r["traffic"]
        alx_m = t["alx_all_gather"] + t["alx_all_reduce"]
        errs = [mem / r["device_bytes"] - 1, a2a / t["all_to_all"] - 1, alx / alx_m - 1]
        worst = max([worst] + [abs(e) for e in (errs if r["P"] > 1 else errs[:1] + errs[2:])])
        lines.append(
            f"| {r['graph']} | {r['nnz']:,} | {r['P']} | {gp['fill']:.3f} | {gp['u']:.3f} | "
            f"{gp['rho']:.3f} | {gp['beta']:.2f} | "
            f"{gib(r['device_bytes'])} | {gib(mem)} | {100 * errs[0]:+.1f} % | {gib(t['all_to_all'])} | "
            f"{gib(a2a)} | {100 * errs[1]:+.1f} % | {gib(alx_m)} | {gib(alx)} | {100 * errs[2]:+.1f} % |"
        )
    lines += [
        "",
        f"Largest |error| (all-to-all at P = 1 is the calibration point, not counted): {100 * worst:.1f} %.",
        "",
        "Graphs: cnr-2000 (LAW, 325,557 nodes); synthN M: `alsx.webgraph.synthetic` with N M arcs on "
        "N/20 M nodes (SynthSpec defaults, seed 0, duplicates removed). Each (graph, P) took 1-5 min on "
        "this shared 2-core machine for 10M arcs (load 8-15 during the runs) and 9 min for 50M arcs at "
        "P = 8, so the 50M-arc graph (issue 19's size) was measured at P = 8 only: it has no P = 1 row, "
        "and its row is predicted from synth10M's P = 1 parameters, out of sample (nothing of the 50M "
        "graph enters the model).",
        "",
    ]
    lines += project(recs)
    return "\n".join(lines) + "\n"


def project(recs: list[dict]) -> list[str]:
    synth = [r for r in recs if r["graph"].startswith("synth") and r["P"] == 1]
    src = max(synth, key=lambda r: r["nnz"])["graph"] if synth else recs[-1]["graph"]
    gp = graph_params(recs, src)  # the synthetic web graph's parameters stand in for WebGraph's
    out = [
        "## 2. Projection to ALX's WebGraph variants (d = 128, float32 tables, CG 3)",
        "",
        f"Graph parameters from {src} at P = 1: fill {gp['fill']:.3f}, u {gp['u']:.3f} (u = 1 "
        "would be a batch that never fetches a row twice: larger graphs move towards it, so the all-to-all "
        "column is also given at u = 1). Device assumptions: H200 139 GiB, 4.3 TB/s, 60 TFLOP/s f32, NVLink "
        "450 GB/s per GPU inside a node of 8, 50 GB/s (400 Gb/s InfiniBand) across nodes; TPU-v3 core 16 GiB, "
        "450 GB/s, ~10 TFLOP/s f32-equivalent, 25 GB/s ICI per core; the half-step at 30 % of the roofline "
        "(benchmarks/gpu.py's bytes and FLOPs). ALX reports about 20 min/epoch for WebGraph-sparse on 256 "
        "TPU-v3 cores.",
        "",
        "| variant | nodes | edges | device | N | GiB/device | fits | a2a GiB/device/epoch (u=1) | ALX "
        "GiB/device/epoch | compute s | a2a s | ALX comm s | smallest N that fits, f32 (bf16 tables) |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios, facts = [], {}
    for name, (n, e) in WEBGRAPH.items():
        for dk, dev in DEVICES.items():
            smallest = [
                next(
                    (
                        p
                        for p in [2**k for k in range(14)]
                        if memory_model(n, n, e, p, gp["fill"], gp["beta"], isz) <= 0.9 * dev["mem"]
                    ),
                    None,
                )
                for isz in (4, 2)
            ]
            for p in (8, 64, 256):
                mem = memory_model(n, n, e, p, gp["fill"], gp["beta"])
                t = epoch_time(dev, e, n, p, gp["fill"], gp["u"], gp["rho"], gp["entries"])
                a2a1 = a2a_model(e, p, gp["fill"], 1.0, gp["entries"])
                ratios.append(t["alx_bytes"] / t["a2a_bytes"])
                if name == "sparse" and p == 256:
                    facts[dk] = (t, 3 * 2 * math.ceil(n / p) * DIM * 4 / mem)
                out.append(
                    f"| {name} | {n / 1e6:.1f}M | {e / 1e9:.2f}B | {dk} | {p} | {gib(mem)} | "
                    f"{'yes' if mem <= 0.9 * dev['mem'] else 'no'} | {gib(a2a1)} | {gib(t['alx_bytes'])} | "
                    f"{t['compute']:.2f} | {t['a2a']:.2f} | {t['alx']:.2f} | {smallest[0]} ({smallest[1]}) |"
                )
    out += [
        "",
        "Fits: model bytes <= 90 % of the device's memory. Compute and communication are per epoch and "
        "would overlap at best; a2a s uses the measured u (the u = 1 bytes are the upper bound).",
        "",
        "## 3. What the numbers say",
        "",
        "- Memory per device is 3 table sets + the packed batches: the compiled epoch aliases none of its "
        "inputs (alias 0 in every run above), so it holds the old tables, the new ones and the update being "
        "built. Donating w and h to the epoch program would cut the table part by a third: the largest "
        f"saving left for WebGraph-sparse (the 3 table sets are {100 * facts['H200'][1]:.0f} % of its bytes "
        "per device at d = 128, N = 256).",
        "- alsx's all-to-all moves each batch's distinct rows once, so its bytes per device fall as 1/P "
        "(times a few % for the busiest owner's padding, as measured at P = 2..8); ALX's all-gather + psum "
        "moves every padded entry's row in float32 to every device, flat in P: "
        f"{min(ratios):.0f}-{max(ratios):.0f}x the all-to-all's crossing bytes over the rows above.",
        "- The smallest device counts are in the last column (bfloat16 tables halve the table part); for "
        "WebGraph-sparse compare them with ALX's 256 TPU-v3 cores. Compute per epoch at 30 % of the roofline is seconds; "
        "the exchange is the part that decides the epoch time once the graph spans nodes (InfiniBand).",
        "- ALX reports ~20 min per epoch on 256 TPU-v3 cores; the ALX-scheme column above gives "
        f"{facts['TPU-v3 core'][0]['alx'] / 60:.0f} min under a 25 GB/s per-core ICI assumption, so either "
        "the real ICI all-gather runs faster than assumed or ALX's exchange moves fewer bytes (bfloat16, its "
        "own batch shapes). The all-to-all volumes do not depend on that assumption; their seconds do.",
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--synth-edges", type=int, default=10_000_000)
    ap.add_argument("--graphs", nargs="+", default=["cnr", "synth"])
    ap.add_argument("--report-only", action="store_true", help="reuse cost_model_measured.json")
    ap.add_argument("--resume", action="store_true", help="keep the (graph, P) already in cost_model_measured.json")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.synth_edges)))
        return
    if a.report_only:
        recs = json.loads(MEASURED.read_text())
    else:
        recs = measure(a.graphs, a.devices, a.synth_edges, a.resume)
    REPORT.write_text(report(recs, a))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
