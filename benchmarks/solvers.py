"""Speed figures beyond the side-by-side suite: linear cost, solvers at large d, bf16, FLOP rates.

One task per command; every measurement runs in its own child interpreter (its own
peak RSS and JAX device count), is appended to ``benchmarks/results_solvers.jsonl``,
and ``benchmarks/results_solvers.md`` is rewritten from all records at the end.

  # cost per nonzero at 10M and 100M nonzeros, d=64 (alsx and implicit in one run); the
  # training part of each synthetic split is built once by its own child and saved under
  # benchmarks/out/cache/, so every timed child holds only the matrix it trains on
  python benchmarks/solvers.py --task linear --epochs 5

  # iALS++ (block) against CG and Cholesky at large d, same epochs, Recall@20
  # (a 'cpu-'/'jax-' prefix picks the variant's backend: the CPU kernels against each other)
  python benchmarks/solvers.py --task solvers --dataset ml1m --dims 1024 --epochs 8 \\
      --variants cg:3,cholesky,block:128,block:64,cpu-cg:3,cpu-block:16

  # bf16 against float32 tables: seconds per epoch and Recall@20
  python benchmarks/solvers.py --task dtype --dataset gowalla --dims 256 --epochs 16

  # FLOP rate of the solve phase against the measured sgemm (alsx train --profile's numbers)
  python benchmarks/solvers.py --task flops --dataset cnr --dims 64,256 --variants cg:3,cholesky,block:32

  # the CPU kernels alone at large d: one iALS++ sweep per block size against CG steps,
  # both sides of the data, random tables in a random eigenbasis (no training)
  python benchmarks/solvers.py --task kernels --dataset ml1m --dims 1024 --variants 1,2,4,8,16,32

  python benchmarks/solvers.py --report

alsx runs with one JAX CPU device per core (``--devices``, the default of ``alsx train``);
implicit with BLAS limited to one thread and ``num_threads=2`` (3 CG steps).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import numpy as np

import _common as C

JSONL = C.BENCH / "results_solvers.jsonl"
MD = C.BENCH / "results_solvers.md"
KS = (20, 50)


# =============================================================================== children


def _variant(v: str) -> dict:
    """'cg:3' / 'cholesky' / 'block:128' -> ALS keyword arguments.

    A 'cpu-' or 'jax-' prefix ('cpu-block:16') also picks the backend, overriding --backend.
    """
    backend, dash, rest = v.partition("-")
    if dash and backend in ("cpu", "jax"):
        return {**_variant(rest), "backend": backend}
    name, _, arg = v.partition(":")
    if name == "cg":
        return {"solver": "cg", "cg_steps": int(arg or 3)}
    if name == "block":
        return {"solver": "block", "block_size": int(arg or 64)}
    return {"solver": name}


def kernel_times(spec: dict, rounds: int = 5) -> dict:
    """Least seconds over ``rounds`` round-robin calls of the CPU kernels on each side of a data
    set (so a slow spell of the machine hits every kernel alike): the CG kernel with 0..3 steps
    and, per block size, one iALS++ sweep from its own score pass (':1'), the score pass alone
    (':0') and one sweep given handed-on residuals (':h', what training runs between rescores)."""
    from alsx.core import cpu, cpu_block

    train = C.split_of(spec["dataset"], C.load(spec["dataset"])).train
    d, rng = spec["dim"], np.random.default_rng(0)
    out: dict = {"nnz_train": int(train.nnz)}

    for side, csr in (("rows", train.csr(1.0)), ("cols", train.csc(1.0))):
        c = cpu._as_csr32(csr)
        w = (rng.standard_normal((c.n_rows, d)) * 0.1 / np.sqrt(d)).astype(np.float32)
        h = (rng.standard_normal((c.n_cols, d)) * 0.1 / np.sqrt(d)).astype(np.float32)
        shared = np.abs(rng.standard_normal(d)).astype(np.float32) * spec["a0"]
        lam = np.full(c.n_rows, spec["reg"] * 100, np.float32)
        starts = cpu.work_blocks(c.indptr, cpu.BLOCKS_PER_THREAD * cpu.numba_threads())
        res, handed = np.empty_like(w), np.full(c.nnz, 0.5, np.float32)
        fns = {
            f"cg:{k}": functools.partial(cpu._cg_rows, c.indptr, c.indices, c.values, starts, w, h, shared, lam, k, res)
            for k in range(4)
        }
        for b in spec["blocks"]:
            for sweeps in (0, 1):
                fns[f"block:{b}:{sweeps}"] = functools.partial(
                    cpu_block.block_rows, c, starts, w, h, shared, lam, b, sweeps, res
                )
            fns[f"block:{b}:h"] = functools.partial(
                cpu_block.block_rows, c, starts, w, h, shared, lam, b, 1, res, residuals_in=handed
            )
        for fn in fns.values():  # compile, fault pages in
            fn()
        t = {k: float("inf") for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                t[k] = min(t[k], time.perf_counter() - t0)
        out[side] = t
    return out


def child(spec: dict) -> dict:
    if spec.get("devices", 1) > 1:  # before jax is imported
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"
    if "prepare" in spec:  # a preparing child's spec has no task
        return {"path": str(C.prepare_train(spec["prepare"]))}
    if spec["task"] == "kernels":
        return kernel_times(spec)
    t0 = time.perf_counter()
    if spec.get("cached"):  # built by a 'prepare' child: this process holds only the training matrix
        split, train = None, C.load_train(spec["dataset"])
    else:
        x = C.load(spec["dataset"])
        split = C.split_of(spec["dataset"], x)
        train = split.train
        del x  # the unsplit matrix is not needed any more (at 100M it is 1.2 GB of the child's memory)
        if not spec.get("evaluate", True):
            split = None  # nor the held-out parts: the child keeps only what the library trains on
    out = {"load_s": time.perf_counter() - t0, "nnz_train": int(train.nnz), "rss_before_fit_gib": C.rss_gib()}
    if spec["lib"] == "implicit":
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        times: list[float] = []
        with threadpool_limits(limits=1, user_api="blas"):
            m = AlternatingLeastSquares(
                factors=spec["dim"],
                iterations=spec["epochs"],
                num_threads=2,
                random_state=0,
                use_cg=True,
                regularization=10.0,
                alpha=10.0,
            )
            m.fit(C.to_scipy(train), show_progress=False, callback=lambda it, el, loss: times.append(el))
        return {**out, "epoch_s": times, "peak_rss_gib": C.peak_rss_gib()}

    import jax

    from alsx.eval.protocol import evaluate

    kw = {
        "backend": spec.get("backend", "jax"),
        **_variant(spec.get("variant", "cg:3")),
        "dtype": spec.get("dtype", "float32"),
    }
    m = C.als(spec["dim"], spec["epochs"], spec["reg"], spec["a0"], **kw).fit(train)
    out.update(
        {
            "devices": jax.device_count(),
            "engine": m.engine_name_,
            "epoch_s": [r["seconds"] for r in m.history_],
            "peak_rss_fit_gib": C.peak_rss_gib(),
        }
    )
    if spec.get("evaluate", True):
        out["metrics"] = evaluate(m.row_embeddings_, m.col_embeddings_, split, m.hparams, KS)["model"]
    if spec["task"] == "flops":
        from alsx.core.profile import profile_model

        out["profile"] = profile_model(m, train)
    out["peak_rss_gib"] = C.peak_rss_gib()
    return out


# =============================================================================== parent


def run(spec: dict, timeout: float) -> dict:
    load0 = C.loadavg()
    print(f"[{C.now()}] {spec} load {load0}", flush=True)
    res = {**spec, **C.run_child(Path(__file__), spec, timeout=timeout)}
    res.update(
        {
            "date": C.now(),
            "loadavg_start": load0,
            "loadavg_end": C.loadavg(),
            "command": C.command_line(),
            "machine": C.machine(),
        }
    )
    C.append_jsonl(JSONL, res)
    if "error" in res:
        print("   ERROR", res["error"][-800:], flush=True)
    else:
        print(
            f"   s/epoch {_per_epoch(res):.2f}  recall@20 {res.get('metrics', {}).get('recall@20', float('nan')):.4f}",
            flush=True,
        )
    return res


def _per_epoch(r: dict) -> float:
    e = r.get("epoch_s") or [float("nan")]
    return float(np.mean(e[1:])) if len(e) > 1 else float(e[0])


def main_parent(a) -> None:
    dims = [int(d) for d in a.dims.split(",")]
    base = {"task": a.task, "epochs": a.epochs, "reg": a.reg, "a0": a.a0, "devices": a.devices, "backend": a.backend}
    if a.task == "linear":
        for ds in ("synth10m", "synth100m"):
            todo = [lib for lib in ("alsx", "implicit") if not a.only or f"{lib}:{ds}" in a.only.split(",")]
            if todo and not C.train_cache(ds).exists():
                print(f"[{C.now()}] preparing {C.train_cache(ds)}", flush=True)
                prep = C.run_child(Path(__file__), {"prepare": ds}, timeout=a.timeout)
                if "error" in prep:
                    raise SystemExit(f"preparing {ds} failed: {prep['error']}")
            for lib in todo:
                run({**base, "lib": lib, "dataset": ds, "dim": dims[0], "evaluate": False, "cached": True}, a.timeout)
    elif a.task == "kernels":
        for d in dims:
            run(
                {
                    **base,
                    "lib": "alsx",
                    "dataset": a.dataset,
                    "dim": d,
                    "blocks": [int(v) for v in a.variants.split(",")],
                },
                a.timeout,
            )
    elif a.task == "dtype":
        for d in dims:
            for dt in ("float32", "bfloat16"):
                run({**base, "lib": "alsx", "dataset": a.dataset, "dim": d, "dtype": dt}, a.timeout)
    else:  # solvers, flops
        for d in dims:
            for v in a.variants.split(","):
                run(
                    {
                        **base,
                        "lib": "alsx",
                        "dataset": a.dataset,
                        "dim": d,
                        "variant": v,
                        "evaluate": a.task == "solvers",
                    },
                    a.timeout,
                )


# =============================================================================== report


def _latest(records: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """The newest successful record per configuration, in first-seen order."""
    seen: dict[tuple, dict] = {}
    for r in records:
        if "error" not in r:
            seen[tuple(r.get(k) for k in keys)] = r
    return list(seen.values())


def _label(r: dict) -> str:
    """'implicit', or alsx with its engine (records before the CPU backend ran the JAX engine)."""
    if r["lib"] != "alsx":
        return r["lib"]
    return "alsx (CPU kernel)" if r.get("engine") == "CpuEngine" else f"alsx ({r.get('devices', 1)} JAX dev.)"


def _load(r: dict) -> str:
    return f"{r['loadavg_start'].split()[0]} → {r['loadavg_end'].split()[0]}"


def write_report() -> None:
    recs = C.read_jsonl(JSONL)
    by = {t: [r for r in recs if r["task"] == t] for t in ("linear", "solvers", "dtype", "flops", "kernels")}
    L = [
        "## Solvers, linear cost, bf16 and FLOP rates",
        "",
        "Written by `benchmarks/solvers.py` (commands in each table's rows and in the script's docstring). "
        "s/epoch is the mean of epochs 2..E (alsx's first epoch holds the XLA compile). alsx runs with one JAX "
        "CPU device per core (as `alsx train` does); implicit 0.7.3 with BLAS threads = 1, `num_threads=2`, CG 3. "
        "The load average (2 cores) at start → end of each child is given; a niced background job (the WebGraph "
        "820M run) shared the machine during some rows, as marked by loads above ≈1.",
        "",
    ]
    rows = _latest(by["linear"], ("lib", "engine", "dataset", "dim", "epochs", "cached", "code"))
    if rows:
        L += [
            "### Cost against nonzeros (d=64)",
            "",
            "Timed child: *train only* loads the training part saved by a separate preparing child (it holds "
            "nothing else); *built* generates and splits the data itself (earlier runs).  "
            "Rows with 'code of COMMIT' ran that commit's engine with this script (to separate the two changes).",
            "",
            "| data | nnz (train) | library | epochs | timed child | s/epoch | s per 1M nnz "
            "| 100M ÷ 10M per-nnz cost | RSS before fit GiB | peak RSS GiB | load |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
        ]

        def key(r, ds):
            return _label(r), r["epochs"], bool(r.get("cached")), r.get("code"), ds

        per = {key(r, r["dataset"]): _per_epoch(r) / (r["nnz_train"] / 1e6) for r in rows}
        for r in rows:
            ratio = ""
            if r["dataset"] == "synth100m" and key(r, "synth10m") in per:
                ratio = f"{per[key(r, 'synth100m')] / per[key(r, 'synth10m')]:.2f}"
            L.append(
                f"| {r['dataset']} | {r['nnz_train']:,} | {_label(r)} | {r['epochs']} | "
                f"{'train only' if r.get('cached') else 'built'}"
                f"{', code of ' + r['code'] if r.get('code') else ''} | {_per_epoch(r):.2f} | "
                f"{per[key(r, r['dataset'])]:.3f} | {ratio} | {C.fmt(r.get('rss_before_fit_gib'), 2)} | "
                f"{r['peak_rss_gib']:.2f} | {_load(r)} |"
            )
        L += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})), ""]
    for task, what, title in (
        ("solvers", "variant", "Solvers at large d (same data, d, epochs, λ, α0)"),
        ("dtype", "dtype", "bf16 against float32 table storage (CG 3)"),
    ):
        rows = _latest(by[task], ("dataset", "dim", what, "epochs", "reg", "a0"))
        if rows:
            L += [
                f"### {title}",
                "",
                f"| data | d | {what} | engine | epochs | λ | α0 | s/epoch | Recall@20 | "
                "Recall@50 | NDCG@20 | peak RSS GiB | load |",
                "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            for r in rows:
                m = r.get("metrics", {})
                L.append(
                    f"| {r['dataset']} | {r['dim']} | {r.get(what, 'float32')} | {_label(r)} | {r['epochs']} | "
                    f"{r['reg']} | "
                    f"{r['a0']} | {_per_epoch(r):.2f} | {C.fmt(m.get('recall@20'))} | "
                    f"{C.fmt(m.get('recall@50'))} | {C.fmt(m.get('ndcg@20'))} | {r['peak_rss_gib']:.2f} | "
                    f"{_load(r)} |"
                )
            L += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})), ""]
    rows = _latest([r for r in by["flops"] if "rotate" in r["profile"]["rows"]], ("dataset", "dim", "variant"))
    if rows:
        L += [
            "### FLOP rate of the CPU backend's kernel (`alsx train --profile`)",
            "",
            "Phases of one half-step: Gramian (+ eigen-decomposition), rotation of both tables (BLAS), the fused "
            "kernel's residual pass (gather, b − A·x0, write) and its CG steps.  GFLOP/s counts the kernel's "
            "multiply-adds over stored entries (2 passes × 2d FLOPs per entry for the residual and each step) "
            "per second of kernel time, against a float32 2048² matrix product timed in the same process.  "
            "For the iALS++ kernel (`cpu-block:b`) the residual column is its score pass (H_u·x0) and the steps "
            "column its sweep (earlier records: the sweep with the score pass less the score pass; since the "
            "residual hand-off, the sweep given handed-on residuals, as training runs it, and GFLOP/s over that "
            "sweep alone); FLOPs as `alsx.core.cpu_block.block_flops` (per entry d·(b + 5) for one sweep, "
            "earlier kernel d·(b + 8), against 16·d for CG 3).",
            "",
            "| data | d | variant | side | Gramian s | rotate s | residual s | CG steps / sweeps s | kernel GFLOP/s | "
            "sgemm GFLOP/s | % of sgemm | load |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            for side in ("rows", "cols"):
                p = r["profile"][side]
                L.append(
                    f"| {r['dataset']} | {r['dim']} | {r['variant']} | {side} | {p['gramian']:.3f} | "
                    f"{p['rotate']:.3f} | "
                    f"{p['residual']:.3f} | {p['cg_steps']:.3f} | {p['solve_gflops']:.1f} | "
                    f"{p['sgemm_gflops']:.1f} | {100 * p['solve_gflops'] / p['sgemm_gflops']:.0f} % | {_load(r)} |"
                )
        L += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})), ""]
    rows = _latest([r for r in by["flops"] if "rotate" not in r["profile"]["rows"]], ("dataset", "dim", "variant"))
    if rows:
        L += [
            "### FLOP rate of the solve phase (one device, `alsx train --profile`'s measurement)",
            "",
            "The solve phase's floating-point operations (`alsx.core.profile.solve_flops`: multiply-adds count 2, "
            "padding included) over the seconds of its normal-equation and solve phases, against a float32 "
            "2048² matrix product timed in the same process (the machine's sgemm rate on this device).",
            "",
            "| data | d | solver | side | gather s | normal eq. s | solve s | scatter s | long rows s | "
            "solve GFLOP/s | sgemm GFLOP/s | % of sgemm | load |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            for side in ("rows", "cols"):
                p = r["profile"][side]
                L.append(
                    f"| {r['dataset']} | {r['dim']} | {r['variant']} | {side} | {p['gather']:.3f} | "
                    f"{p['normal_equations']:.3f} | {p['solve']:.3f} | {p['scatter']:.3f} | "
                    f"{p['long_rows']:.3f} | {p['solve_gflops']:.1f} | {p['sgemm_gflops']:.1f} | "
                    f"{100 * p['solve_gflops'] / p['sgemm_gflops']:.0f} % | {_load(r)} |"
                )
        L += ["", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})), ""]
    rows = _latest(by["kernels"], ("dataset", "dim"))
    if rows:
        L += [
            "### The CPU kernels alone: one iALS++ sweep against CG steps",
            "",
            "Seconds per side (least of 5 round-robin calls, both cores; earlier records: best of 3) on random "
            "tables; 'CG k' is the kernel with k steps (0: its residual pass alone), 'iALS++ b' one sweep of "
            "blocks of b given the residuals handed on by the previous half-step, as training runs it (in "
            "brackets: with its own score pass, as on rescore epochs), then that sweep's cost in CG-3 kernels. "
            "Records without a handed-on time show the sweep with its score pass (and the score pass alone).",
            "",
        ]
        for r in rows:
            blocks = r["blocks"]
            L += [
                f"{r['dataset']}, d={r['dim']}, {r['nnz_train']:,} training entries, load {_load(r)}:",
                "",
                "| side | CG 0 | CG 1 | CG 3 | " + " | ".join(f"iALS++ b={b}" for b in blocks) + " |",
                "|---|---:|---:|---:|" + "---:|" * len(blocks),
            ]
            for side in ("rows", "cols"):
                t = r[side]
                cells = [
                    (
                        f"{t[f'block:{b}:h']:.3f} ({t[f'block:{b}:1']:.3f}) = {t[f'block:{b}:h'] / t['cg:3']:.2f}×"
                        if f"block:{b}:h" in t
                        else f"{t[f'block:{b}:1']:.3f} ({t[f'block:{b}:0']:.3f}) = {t[f'block:{b}:1'] / t['cg:3']:.1f}×"
                    )
                    for b in blocks
                ]
                L.append(
                    f"| {side} | {t['cg:0']:.3f} | {t['cg:1']:.3f} | {t['cg:3']:.3f} | " + " | ".join(cells) + " |"
                )
            L += ["", f"Command: `{r['command']}`", ""]
    if recs:
        L += [f"Machine: {recs[-1]['machine']}.", ""]
    MD.write_text("\n".join(L))
    print(f"wrote {MD}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["linear", "solvers", "dtype", "flops", "kernels"], default="linear")
    p.add_argument("--dataset", default="ml1m")
    p.add_argument("--dims", default="64")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--variants", default="cg:3,cholesky,block:128")
    p.add_argument("--reg", type=float, default=0.003)
    p.add_argument("--a0", type=float, default=0.03)
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="JAX CPU devices for alsx")
    p.add_argument(
        "--backend",
        choices=["auto", "cpu", "jax"],
        default="auto",
        help="alsx engine (auto: the CPU kernel for CG float32 here, JAX otherwise)",
    )
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--only", default="", help="linear task: run only these LIB:DATASET pairs, e.g. alsx:synth100m")
    p.add_argument("--report", action="store_true")
    C.add_data_arg(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    C.use_data(a)
    if a.child:
        import json

        C.emit(child(json.loads(a.child)))
        return
    if not a.report:
        main_parent(a)
    write_report()


if __name__ == "__main__":
    main()
