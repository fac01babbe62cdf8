"""alsx against implicit (CPU) and Spark MLlib ALS: tuned quality and speed.

Two tasks, one command each; every measurement runs in its own child interpreter
(so its peak RSS, ``VmHWM`` of /proc/self/status, is its own) and is appended to
``benchmarks/results_compare.jsonl``; the markdown section
``benchmarks/results_compare.md`` and ``benchmarks/compare.png`` are rewritten
from all records at the end of every invocation.

  # quality: each library tuned on its own 3x3 grid, same d and epochs
  python benchmarks/compare.py --task grid --datasets ml1m,cnr --dims 64 --epochs 10 --libs alsx,implicit

  # speed: seconds per epoch, same d and epochs, back to back in one invocation
  python benchmarks/compare.py --task speed --datasets cnr,gowalla,ml1m,synth10m --dims 64,256 \
      --epochs 5 --libs alsx,implicit,spark

  # only rewrite the markdown and the chart
  python benchmarks/compare.py --report

Protocols: ml1m and gowalla use the split shipped with the data (``is_test``);
cnr and synth10m hold out 10 % of the rows (80 % of each held-out row is the
fold-in history, the rest the ground truth, seed 0); synth10m is evaluated on a
seeded sample of 10k of its 100k held-out rows (``_common.EVAL_SAMPLE``). Each library's top-50 per
evaluated row (history excluded) goes through ``alsx.eval.metrics.ranking_metrics``.

implicit: ``AlternatingLeastSquares(use_cg=True)`` (3 CG steps unless a grid sets ``cg_steps``), ``num_threads=2``,
BLAS limited to one thread with threadpoolctl; held-out rows are folded in by
``recommend(..., recalculate_user=True)``. Spark: ``pyspark.ml.recommendation.ALS``
with ``implicitPrefs=True`` on ``local[2]``; held-out rows are folded in with
NumPy by Spark's own normal equations (Hu et al. with ALS-WR's lambda * n_u).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

import _common as C

JSONL = C.BENCH / "results_compare.jsonl"
MD = C.BENCH / "results_compare.md"
PNG = C.BENCH / "compare.png"
KS = (20, 50)
INVOCATION = time.strftime("%Y%m%dT%H%M%S")

# Tuning grids (3 x 3 each). alsx: lambda x alpha0 (nu = 1, frequency-scaled lambda, Rendle et al.).
# implicit: regularization x alpha (observed confidence alpha * 1, unobserved weight 1, plain lambda).
GRIDS = {
    "alsx": {"reg": [0.001, 0.003, 0.01], "unobserved_weight": [0.01, 0.03, 0.1]},
    "implicit": {"regularization": [1.0, 10.0, 100.0], "alpha": [3.0, 10.0, 30.0]},
    "spark": {"regParam": [0.01, 0.1, 1.0], "alpha": [3.0, 10.0, 30.0]},
}
# Keys a grid may tune beyond the two main ones, at the value a point has when it does not name them
# (alsx's come from HParams; implicit 0.7 fixes cg_steps = 3 in its constructor).
EXTRA_KEYS = {"alsx": ("nu", "init_scale", "init", "cg_steps"), "implicit": ("cg_steps",)}


def _defaults_of(lib: str) -> dict:
    if lib == "alsx":
        from alsx.config import HParams

        return {k: getattr(HParams(), k) for k in EXTRA_KEYS["alsx"]}
    return {"cg_steps": 3} if lib == "implicit" else {}


def _full(lib: str, cfg: dict) -> dict:
    """``cfg`` with the library's defaults filled in, so {} and {'cg_steps': 3} are one point."""
    return {**_defaults_of(lib), **cfg}


# Used for speed runs when no grid result exists for the data set.
DEFAULTS = {
    "alsx": {"reg": 0.003, "unobserved_weight": 0.03},
    "implicit": {"regularization": 10.0, "alpha": 10.0},
    "spark": {"regParam": 0.1, "alpha": 10.0},
}


# =============================================================================== children


def _rss():
    return C.peak_rss_gib()


def child_alsx(spec: dict) -> dict:
    if spec.get("alsx_devices", 1) > 1:  # before jax is imported; `alsx train`'s default is one per core
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['alsx_devices']}"
    import alsx
    from alsx.eval.protocol import evaluate

    x = C.load(spec["dataset"])
    split = C.split_of(spec["dataset"], x)
    rss_load = _rss()
    out = []
    for i, cfg in enumerate(spec["configs"]):
        t0 = time.perf_counter()
        m = alsx.ALS(
            dim=spec["dim"],
            epochs=spec["epochs"],
            progress=False,
            seed=0,
            backend=spec.get("alsx_backend", "jax"),
            **cfg,
        ).fit(split.train)
        fit_wall = time.perf_counter() - t0
        rss_fit = _rss()
        t1 = time.perf_counter()
        ev = (
            evaluate(m.row_embeddings_, m.col_embeddings_, split, m.hparams, KS, baseline=(i == 0))
            if spec.get("evaluate", True)
            else {"model": {}}
        )
        out.append(
            {
                "config": cfg,
                "engine": m.engine_name_,
                "epoch_s": [r["seconds"] for r in m.history_],
                "loss_s": [r["loss_seconds"] for r in m.history_],
                "fit_wall_s": fit_wall,
                "pack_s": m.pack_stats_.seconds if m.pack_stats_ else None,
                "eval_s": time.perf_counter() - t1,
                "metrics": ev["model"],
                "popularity": ev.get("popularity"),
                "peak_rss_fit_gib": rss_fit,
            }
        )
    return {"runs": out, "rss_load_gib": rss_load, "peak_rss_gib": _rss()}


def child_implicit(spec: dict) -> dict:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from alsx.eval.metrics import ranking_metrics

    x = C.load(spec["dataset"])
    split = C.split_of(spec["dataset"], x)
    ui = C.to_scipy(split.train)
    rows, truth, history = C.eval_parts(split)
    hist = C.csr_to_scipy(history)
    rss_load = _rss()
    out = []
    with threadpool_limits(limits=1, user_api="blas"):
        for cfg in spec["configs"]:
            times: list[float] = []
            kw = {k: v for k, v in cfg.items() if k != "cg_steps"}
            model = AlternatingLeastSquares(
                factors=spec["dim"], iterations=spec["epochs"], num_threads=2, random_state=0, use_cg=True, **kw
            )
            model.cg_steps = int(cfg.get("cg_steps", 3))  # an attribute in implicit 0.7, not an argument
            t0 = time.perf_counter()
            model.fit(ui, show_progress=False, callback=lambda it, el, loss, times=times: times.append(el))
            fit_wall = time.perf_counter() - t0
            rss_fit = _rss()
            t1 = time.perf_counter()
            if not spec.get("evaluate", True):
                ids = None
            elif split.foldin is not None:
                ids, _ = model.recommend(
                    np.arange(len(rows)), hist, N=max(KS), filter_already_liked_items=True, recalculate_user=True
                )
            else:
                ids, _ = model.recommend(rows, hist, N=max(KS), filter_already_liked_items=True)
            metrics = ranking_metrics(np.asarray(ids), truth, KS) if ids is not None else {}
            out.append(
                {
                    "config": cfg,
                    "epoch_s": times,
                    "fit_wall_s": fit_wall,
                    "eval_s": time.perf_counter() - t1,
                    "metrics": metrics,
                    "peak_rss_fit_gib": rss_fit,
                }
            )
    return {"runs": out, "rss_load_gib": rss_load, "peak_rss_gib": _rss()}


def _spark_foldin(y: np.ndarray, hist, reg: float, alpha: float) -> np.ndarray:
    """Spark's implicit row solve: (YtY + Y^T (C - I) Y + reg * n_u I) x = Y^T C p, C = 1 + alpha r."""
    d = y.shape[1]
    yty = y.T @ y
    out = np.zeros((hist.shape[0], d), np.float64)
    for u in range(hist.shape[0]):
        s, e = hist.indptr[u], hist.indptr[u + 1]
        if e == s:
            continue
        yu = y[hist.indices[s:e]]
        c = 1.0 + alpha * hist.data[s:e]
        a = yty + (yu.T * (c - 1.0)) @ yu + reg * (e - s) * np.eye(d)
        out[u] = np.linalg.solve(a, yu.T @ c)
    return out.astype(np.float32)


def child_spark(spec: dict) -> dict:
    import os

    import pandas as pd
    import psutil
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    from alsx.eval.metrics import ranking_metrics
    from alsx.serve.topk import topk_scores

    x = C.load(spec["dataset"])
    split = C.split_of(spec["dataset"], x)
    rows, truth, history = C.eval_parts(split)
    n_rows, n_cols = split.train.shape
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("alsx-compare")
        .config("spark.driver.memory", spec.get("spark_memory", "10g"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    t0 = time.perf_counter()
    pdf = pd.DataFrame({"u": split.train.rows, "i": split.train.cols, "r": np.ones(split.train.nnz, np.float32)})
    df = spark.createDataFrame(pdf).repartition(8).cache()
    df.count()
    load_s = time.perf_counter() - t0
    rss_load = _rss()
    out = []
    for cfg in spec["configs"]:

        def fit(iters, cfg=cfg):
            als = ALS(
                rank=spec["dim"],
                maxIter=iters,
                implicitPrefs=True,
                userCol="u",
                itemCol="i",
                ratingCol="r",
                seed=0,
                numUserBlocks=8,
                numItemBlocks=8,
                **cfg,
            )
            t = time.perf_counter()
            m = als.fit(df)  # ALS.train materialises both factor tables before returning
            return m, time.perf_counter() - t

        m, fit_wall = fit(spec["epochs"])
        one_wall = None
        if spec.get("spark_one_iter", True) and spec["epochs"] > 1:
            _, one_wall = fit(1)

        def table(fdf, n):
            p = fdf.toPandas()
            t = np.zeros((n, spec["dim"]), np.float32)
            t[p["id"].to_numpy()] = np.stack(p["features"].to_numpy()).astype(np.float32)
            return t

        w, h = table(m.userFactors, n_rows), table(m.itemFactors, n_cols)
        t1 = time.perf_counter()
        hist = C.csr_to_scipy(history)
        metrics = {}
        if spec.get("evaluate", True):
            if split.foldin is not None:
                q = _spark_foldin(h, hist, cfg["regParam"], cfg["alpha"])
            else:
                q = w[rows]
            _, ids = topk_scores(q, h, max(KS), exclude=history)
            metrics = ranking_metrics(ids, truth, KS)
        per_epoch = ((fit_wall - one_wall) / (spec["epochs"] - 1)) if one_wall is not None else None
        jvm = [p for p in psutil.Process(os.getpid()).children(recursive=True) if "java" in p.name()]
        jvm_hwm = max((C.proc_hwm_gib(p.pid) for p in jvm), default=float("nan"))
        out.append(
            {
                "config": cfg,
                "epoch_s": [per_epoch] if per_epoch is not None else [],
                "fit_wall_s": fit_wall,
                "one_iter_wall_s": one_wall,
                "eval_s": time.perf_counter() - t1,
                "metrics": metrics,
                "peak_rss_fit_gib": _rss(),
                "jvm_peak_rss_gib": jvm_hwm,
                "df_load_s": load_s,
            }
        )
    spark.stop()
    return {"runs": out, "rss_load_gib": rss_load, "peak_rss_gib": _rss()}


CHILDREN = {"alsx": child_alsx, "implicit": child_implicit, "spark": child_spark}


# =============================================================================== parent


def grid_configs(lib: str, override: str | None = None) -> list[dict]:
    """The 3x3 grid of ``lib``, or ``override`` as 'key=v1,v2,.. key2=..'."""
    g = GRIDS[lib]
    if override:

        def num(v: str):  # cg_steps stays an int; a word (init=uniform) stays a string
            if v.lstrip("-").isdigit():
                return int(v)
            try:
                return float(v)
            except ValueError:
                return v

        g = {kv.split("=")[0]: [num(v) for v in kv.split("=")[1].split(",")] for kv in override.split()}
    keys = list(g)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(g[k] for k in keys))]


def best_config(
    records: list[dict],
    lib: str,
    dataset: str,
    dim: int | None = None,
    epochs: int | None = None,
    metric: str = "recall@20",
) -> dict | None:
    """Best grid point of lib on dataset: from the grid at ``dim`` and ``epochs`` if there is one, else at
    ``dim`` and any number of epochs, else at any d (a 10-epoch optimum need not be the 5-epoch one)."""
    best = None
    grids = [
        r
        for r in records
        if r.get("task") == "grid" and r.get("lib") == lib and r.get("dataset") == dataset and "runs" in r
    ]
    if any(r["dim"] == dim for r in grids):
        grids = [r for r in grids if r["dim"] == dim]
    if any(r["epochs"] == epochs for r in grids):
        grids = [r for r in grids if r["epochs"] == epochs]
    for r in grids:
        for run in r["runs"]:
            v = run["metrics"].get(metric, float("nan"))
            if best is None or v > best[0]:
                best = (v, run["config"])
    return None if best is None else best[1]


def main_parent(args) -> None:
    datasets = [d for d in args.datasets.split(",") if d]
    dims = [int(d) for d in args.dims.split(",") if d]
    libs = [lib for lib in args.libs.split(",") if lib]
    records = C.read_jsonl(JSONL)
    for ds in datasets:
        for d in dims:
            for lib in libs:
                if args.task == "grid":
                    configs = grid_configs(lib, getattr(args, f"grid_{lib}"))
                else:
                    configs = [best_config(records, lib, ds, d, args.epochs) or DEFAULTS[lib]]
                spec = {
                    "lib": lib,
                    "dataset": ds,
                    "dim": d,
                    "epochs": args.epochs,
                    "configs": configs,
                    "task": args.task,
                    "spark_memory": args.spark_memory,
                    "spark_one_iter": args.task == "speed",
                    "alsx_devices": args.alsx_devices,
                    "alsx_backend": args.alsx_backend,
                    "evaluate": ds not in args.no_eval.split(","),
                }
                print(f"[{C.now()}] {args.task} {lib} {ds} d={d} epochs={args.epochs} load {C.loadavg()}", flush=True)
                load0 = C.loadavg()
                res = C.run_child(Path(__file__), spec, timeout=args.timeout)
                res.update(
                    {k: spec[k] for k in ("lib", "dataset", "dim", "epochs", "task", "alsx_devices", "alsx_backend")}
                )
                res.update(
                    {
                        "date": C.now(),
                        "loadavg_start": load0,
                        "loadavg_end": C.loadavg(),
                        "command": C.command_line(),
                        "invocation": INVOCATION,
                    }
                )
                C.append_jsonl(JSONL, res)
                records.append(res)
                if "error" in res:
                    print("   ERROR", res["error"][-600:], flush=True)
                else:
                    for run in res["runs"]:
                        print(
                            f"   {run['config']} r@20={run['metrics'].get('recall@20', float('nan')):.4f} "
                            f"s/epoch={_per_epoch(lib, run):.2f} fit={run['fit_wall_s']:.1f}s "
                            f"rss={res['peak_rss_gib']:.2f}GiB",
                            flush=True,
                        )
    write_report()


# =============================================================================== report


def _per_epoch(lib: str, run: dict) -> float:
    """Seconds per epoch without the first epoch (alsx: compile; all libraries treated alike)."""
    e = [v for v in run.get("epoch_s", []) if v is not None]
    if lib == "spark":
        return e[0] if e else run["fit_wall_s"] / max(1, len(e))
    if len(e) > 1:
        return float(np.mean(e[1:]))
    return float(e[0]) if e else float("nan")


def _compile(lib: str, run: dict) -> float | None:
    e = run.get("epoch_s", [])
    if lib != "alsx" or len(e) < 2:
        return None
    return e[0] - float(np.mean(e[1:]))


def _g(v) -> str:
    """A grid value as text: numbers short (1e-06, 4), words (init=uniform) as they are."""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _cfg(c: dict) -> str:
    short = {"reg": "λ", "unobserved_weight": "α0", "regularization": "reg", "alpha": "α", "regParam": "regParam"}
    return ", ".join(f"{short.get(k, k)}={_g(v)}" for k, v in c.items())


def _latest(records, **kw):
    """Latest successful record per key (later runs replace earlier ones)."""
    out = {}
    for r in records:
        if "error" in r and not r.get("timeout"):
            pass
        if all(r.get(k) == v for k, v in kw.items()):
            out[(r["lib"], r["dataset"], r["dim"])] = r
    return out


def _merged_grids(records):
    """(lib, dataset, d, epochs) -> one record whose runs are every grid point measured (latest per config)."""
    out = {}
    for r in records:
        if r.get("task") != "grid":
            continue
        key = (r["lib"], r["dataset"], r["dim"], r["epochs"])
        if "runs" not in r:
            out.setdefault(key, r)
            continue
        prev = out.get(key)
        runs = {json.dumps(x["config"], sort_keys=True): x for x in (prev or {}).get("runs", [])}
        runs.update({json.dumps(x["config"], sort_keys=True): x for x in r["runs"]})
        merged = dict(r)
        merged["runs"] = list(runs.values())
        if prev and "runs" in prev:
            merged["date"] = prev["date"] + ", " + r["date"]
            merged["loadavg_start"] = prev["loadavg_start"] + "; " + r["loadavg_start"]
        out[key] = merged
    return out


def _grid_tables(lib: str, ds: str, d: int, r: dict) -> list[str]:
    """The merged grid ``r`` as 2-D tables over its library's two main keys, one table per setting of
    the further keys that some point of it names (``init``, ``init_scale``, ``nu``, ``cg_steps``; unnamed ones at
    the library's default), so no point hides another."""
    main = list(GRIDS[lib])
    extra = sorted({k for run in r["runs"] for k in run["config"] if k not in main})
    groups: dict[tuple, list[dict]] = {}
    for run in r["runs"]:
        groups.setdefault(tuple(_full(lib, run["config"])[k] for k in extra), []).append(run)
    out = []
    for ex in sorted(groups):
        runs = groups[ex]
        a_vals = sorted({run["config"][main[0]] for run in runs})
        b_vals = sorted({run["config"][main[1]] for run in runs})
        val: dict[tuple, list[float]] = {}  # a point measured twice (named and unnamed default) shows both
        for run in runs:
            val.setdefault((run["config"][main[0]], run["config"][main[1]]), []).append(run["metrics"]["recall@20"])
        fixed = ", ".join(f"{k}={_g(v)}" for k, v in zip(extra, ex, strict=True))
        out += [
            f"{lib} on {ds}, d={d}, {r['epochs']} epochs{', ' + fixed if fixed else ''} "
            f"(rows {main[0]}, columns {main[1]}):",
            "",
            "| " + main[0] + " \\ " + main[1] + " | " + " | ".join(f"{b:g}" for b in b_vals) + " |",
            "|---|" + "---:|" * len(b_vals),
        ]
        for a in a_vals:
            out.append(
                f"| {a:g} | " + " | ".join(" / ".join(C.fmt(v) for v in val.get((a, b), [None])) for b in b_vals) + " |"
            )
        out.append("")
    return out


def write_report() -> None:
    records = C.read_jsonl(JSONL)
    lines = ["## alsx vs implicit vs Spark MLlib", ""]
    grid = [r for r in records if r.get("task") == "grid"]
    speed = [r for r in records if r.get("task") == "speed"]

    if grid:
        lines += [
            "### Quality, each library tuned on its own 3×3 grid (same d and epochs)",
            "",
            f"- Grids: alsx λ ∈ {GRIDS['alsx']['reg']} × α0 ∈ {GRIDS['alsx']['unobserved_weight']} "
            f"(ν = 1, CG 3 steps); implicit regularization ∈ {GRIDS['implicit']['regularization']} × "
            f"alpha ∈ {GRIDS['implicit']['alpha']} (confidence α·1 on observed pairs, weight 1 on the rest, "
            "CG 3 steps). Where a best point sat on the grid's edge the grid was extended "
            "in that direction (the full grids below list every point measured). Further keys were tuned "
            "on some grids (alsx `init`, `init_scale`, `nu`; both libraries `cg_steps`); each such setting has its "
            "own table below. Grids are kept apart by epochs: the optimum at 5 epochs is not the one at 10. "
            "Each grid point is scored on the test part (no separate validation set), "
            "so both libraries' numbers are equally optimistic.",
            "- recall@k divides hits by min(k, |gt|); recall_gt@k by |gt| (LightGCN convention). "
            "Each library's top-50 (history excluded) is scored by `alsx.eval.metrics.ranking_metrics`.",
            "- ml1m: the shipped split; cnr: held-out rows (10 % of rows, 80 % history folded in, seed 0; "
            "alsx folds in exactly with its training λ, implicit with `recommend(recalculate_user=True)`).",
            "",
        ]
        latest = _merged_grids(grid)
        lines += [
            "| data | d | epochs | library | best config | recall@20 | recall@50 | recall_gt@20 | ndcg@20 | "
            "popularity recall@20 | date | load avg |",
            "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for (lib, ds, d, _), r in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
            if "runs" not in r:
                lines.append(f"| {ds} | {d} | {r['epochs']} | {lib} | failed: {r['error'][:80]} |||||||")
                continue
            b = max(r["runs"], key=lambda run: run["metrics"]["recall@20"])
            m = b["metrics"]
            seen = {k: [_full(lib, x["config"])[k] for x in r["runs"]] for k in b["config"]}
            edge = [
                k
                for k, v in seen.items()
                if len(set(v)) > 1 and isinstance(b["config"][k], (int, float)) and b["config"][k] in (min(v), max(v))
            ]  # a word (init=uniform) has no edge
            edge_note = f" (edge of grid: {', '.join(edge)})" if edge else ""
            pop = next((run["popularity"] for run in r["runs"] if run.get("popularity")), None)
            lines.append(
                f"| {ds} | {d} | {r['epochs']} | {lib} | {_cfg(b['config'])}{edge_note} | {m['recall@20']:.4f} | "
                f"{m['recall@50']:.4f} | {m['recall_gt@20']:.4f} | {m['ndcg@20']:.4f} | "
                f"{C.fmt(pop['recall@20']) if pop else '–'} | {r['date']} | {r['loadavg_start']} |"
            )
        lines += ["", "Full grids (recall@20):", ""]
        for (lib, ds, d, _), r in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
            if "runs" not in r:
                continue
            lines += _grid_tables(lib, ds, d, r)
        cmds = sorted({r["command"] for r in grid})
        lines += ["Commands: " + "; ".join(f"`{c}`" for c in cmds), ""]

    if speed:
        lines += [
            "### Speed (seconds per epoch, same d and epochs, run back to back)",
            "",
            "- s/epoch: mean of epochs 2..E (alsx's first epoch holds the XLA compile, reported as "
            "'compile' = epoch 1 − s/epoch; implicit is treated alike). Spark: (fit(E) − fit(1)) / (E − 1) "
            "in one session, so session start, data loading and the first iteration are excluded.",
            "- alsx computes the training loss after each epoch inside `fit`; its cost is not in s/epoch "
            "but is in 'fit wall'.",
            "- Peak RSS: VmHWM of the child process that loaded the data and trained (before evaluation); "
            "for Spark also the JVM's VmHWM.",
            "- Hyper-parameters (column 'config'): the library's best grid point above at the same d and "
            "epochs where there is one, else at the same d, else alsx λ=0.003 α0=0.03, "
            "implicit reg=10 α=10, Spark regParam=0.1 α=10. Recall@20: min(k,|gt|) denominator.",
            "",
            "| data | d | library | s/epoch | alsx ÷ implicit | compile s | fit wall s | epochs | recall@20 | "
            "peak RSS GiB | config | date | load avg start→end |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        order = {"cnr": 0, "gowalla": 1, "ml1m": 2, "synth10m": 3}
        libs = ["alsx", "implicit", "spark"]
        # Every run is listed (repeats included); alsx ÷ implicit pairs runs of one invocation.
        latest = {}
        for i, r in enumerate(speed):
            latest[(r["lib"], r["dataset"], r["dim"], i)] = r
        inv = lambda r: r.get("invocation", r["command"])  # noqa: E731
        same_cmd = {(r["lib"], r["dataset"], r["dim"], inv(r)): r for r in speed}
        for (lib, ds, d, _), r in sorted(
            latest.items(), key=lambda kv: (order.get(kv[0][1], 9), kv[0][2], kv[1]["date"][:16], libs.index(kv[0][0]))
        ):
            if "runs" not in r:
                lines.append(
                    f"| {ds} | {d} | {lib} | infeasible/failed: {r['error'][:120].replace('|', '/')} "
                    f"|||||||||| {r['date']} | {r['loadavg_start']} |"
                )
                continue
            run = r["runs"][0]
            pe = _per_epoch(lib, run)
            ratio = "–"
            if lib == "alsx":
                imp = same_cmd.get(("implicit", ds, d, inv(r)))
                if imp and "runs" in imp:
                    ratio = f"{pe / _per_epoch('implicit', imp['runs'][0]):.2f}"
            comp = _compile(lib, run)
            rss = f"{run['peak_rss_fit_gib']:.2f}"
            if lib == "spark":
                rss += f" (+JVM {run.get('jvm_peak_rss_gib', float('nan')):.2f})"
            label = lib
            if lib == "alsx":
                label = (
                    "alsx (CPU kernel)"
                    if run.get("engine") == "CpuEngine"
                    else f"alsx ({r.get('alsx_devices') or 1} JAX dev.)"
                )
            lines.append(
                f"| {ds} | {d} | {label} | {pe:.2f} | {ratio} | {C.fmt(comp, 1)} | {run['fit_wall_s']:.1f} | "
                f"{r['epochs']} | {C.fmt(run['metrics'].get('recall@20'))} | {rss} | {_cfg(run['config'])} | "
                f"{r['date']} | "
                f"{r['loadavg_start']} → {r['loadavg_end']} |"
            )
        cmds = sorted({r["command"] for r in speed})
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in cmds), ""]
        lines += ["![speed and quality](compare.png)", ""]
    lines += [
        f"Machine: {C.machine()}; implicit 0.7.3, pyspark {_spark_version()}. "
        "The machine is shared with other developers: the load average (2 cores) shows how contended "
        "each run was; compare libraries only within one invocation.",
        "",
    ]
    MD.write_text("\n".join(lines))
    try:
        plot(records)
    except Exception as e:  # the chart is a convenience
        print("plot failed:", e)


def _spark_version() -> str:
    try:
        import pyspark

        return pyspark.__version__
    except ImportError:
        return "not installed"


def plot(records) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = _latest([r for r in records if r.get("task") == "speed" and "runs" in r])
    grid = {}  # (lib, dataset, d) -> the grid with the most epochs
    for (lib, ds, d, _epochs), r in sorted(_merged_grids([r for r in records if "runs" in r]).items()):
        grid[(lib, ds, d)] = r
    if not speed and not grid:
        return
    libs = ["alsx", "implicit", "spark"]
    colors = {"alsx": "tab:blue", "implicit": "tab:orange", "spark": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    wdt = 0.27
    cases = sorted({(ds, d) for (_, ds, d) in speed})

    def bars(ax, value, src, cases_):
        for j, lib in enumerate(libs):
            vals = [value(lib, src[(lib, ds, d)]) if (lib, ds, d) in src else np.nan for ds, d in cases_]
            ax.bar(np.arange(len(cases_)) + (j - 1) * wdt, vals, wdt, label=lib, color=colors[lib])
        ax.set_xticks(np.arange(len(cases_)), [f"{ds}\nd={d}" for ds, d in cases_], fontsize=8)
        ax.legend(fontsize=8)

    bars(axes[0], lambda lib, r: _per_epoch(lib, r["runs"][0]), speed, cases)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds per epoch (log)")
    axes[0].set_title("Speed: s/epoch, 5 epochs, same d (2 shared cores)")
    bars(axes[1], lambda lib, r: r["runs"][0]["metrics"].get("recall@20", np.nan), speed, cases)
    axes[1].set_ylabel("Recall@20 (min(k,|gt|))")
    axes[1].set_title("Recall@20 of those speed runs (Spark untuned)")
    qcases = sorted({(ds, d) for (_, ds, d) in grid})
    if qcases:
        bars(axes[2], lambda lib, r: max(run["metrics"]["recall@20"] for run in r["runs"]), grid, qcases)
    axes[2].set_title("Tuned on a grid (best point)")
    axes[2].set_ylabel("Recall@20")
    fig.tight_layout()
    fig.savefig(PNG, dpi=100)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["grid", "speed"], default="speed")
    p.add_argument("--datasets", default="cnr,gowalla,ml1m")
    p.add_argument("--dims", default="64,256")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--libs", default="alsx,implicit,spark")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    p.add_argument("--spark-memory", default="10g")
    p.add_argument("--no-eval", default="synth100m", help="data sets whose runs skip evaluation")
    p.add_argument(
        "--alsx-backend",
        choices=["auto", "cpu", "jax"],
        default="auto",
        help="alsx engine: auto = the CPU kernel here (CG, float32); jax = XLA on --alsx-devices",
    )
    p.add_argument(
        "--alsx-devices",
        type=int,
        default=1,
        help="JAX CPU devices for alsx (`alsx train` uses one per core; the estimator one)",
    )
    for lib in GRIDS:
        p.add_argument(f"--grid-{lib}", default=None, help=f"override the {lib} grid: 'key=v1,v2 key2=v3,v4'")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown and the chart")
    C.add_data_arg(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    C.use_data(args)
    if args.child:
        spec = json.loads(args.child)
        C.emit(CHILDREN[spec["lib"]](spec))
        return
    if args.report:
        write_report()
        return
    main_parent(args)


if __name__ == "__main__":
    main()
