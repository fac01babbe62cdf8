"""Time to quality: the training seconds alsx and implicit need to reach implicit's best Recall@20.

  python benchmarks/time_to_quality.py                      # ml1m and gowalla, both libraries, one invocation
  python benchmarks/time_to_quality.py --datasets ml1m --epochs 30
  python benchmarks/time_to_quality.py --report             # rewrite results_time_to_quality.md only

Per data set (CASES): one d, implicit 0.7.3 at its best grid point (``AlternatingLeastSquares(use_cg=True)``,
3 CG steps, ``num_threads=2``, BLAS limited to one thread with threadpoolctl, as compare.py runs it) and alsx
at its tuned configuration at the same d.  Each library trains in its own child interpreter for ``--epochs``
epochs and is evaluated on the test part of the shipped split after every epoch (every user against all
items, training items excluded; Recall@20 with the min(k, |gt|) denominator).  Only training is timed:
implicit's per-iteration seconds from its fit callback, alsx's per-epoch seconds from ``history_`` (epoch 1
holds alsx's compile); evaluation, alsx's packing and implicit's transpose are outside both clocks.

The target is implicit's Recall@20 after its grid's epoch count (``grid_epochs``, the figure its grid point
was chosen on) in this same invocation; each library's time to quality is the summed training seconds up to
the first epoch whose Recall@20 reaches it, or "not reached in E epochs".
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np

import _common as C

JSONL = C.BENCH / "results_time_to_quality.jsonl"
MD = C.BENCH / "results_time_to_quality.md"
METRIC = "recall@20"
# implicit's best grid points (test part, 15 epochs, reg 1..300 x alpha 1..100, 30 points each): ml1m from
# results_tune.md; gowalla from `tune.py --dataset gowalla --dim 64 --epochs 15 --runs implicit` (results_tune.jsonl).
# alsx: a --config file or keywords (gowalla: the best pair of quality.py's d=64 runs).
CASES = {
    "ml1m": {
        "dim": 64,
        "grid_epochs": 15,
        "implicit": {"regularization": 30.0, "alpha": 3.0},
        "alsx": "configs/ml1m-d64.json",
    },
    "gowalla": {
        "dim": 64,
        "grid_epochs": 15,
        "implicit": {"regularization": 1.0, "alpha": 30.0},
        "alsx": {"reg": 0.003, "unobserved_weight": 0.01},  # the best d=64 pair of results_quality.md
    },
}


def alsx_config(case: dict) -> tuple[dict, str]:
    """alsx's keyword arguments for a case (dim and epochs left out) and where they come from."""
    src = case["alsx"]
    if isinstance(src, str):
        from alsx.cli.train_options import read_config

        cfg, origin = read_config(str(C.BENCH / src)), f"benchmarks/{src}"
    else:
        cfg, origin = dict(src), "inline"
    import alsx

    known = set(inspect.signature(alsx.ALS).parameters) - {"dim", "epochs"}
    return {k: v for k, v in cfg.items() if k in known}, origin


# =============================================================================== children


def child_alsx(spec: dict) -> dict:
    import alsx

    x = C.load(spec["dataset"])
    split = C.split_of(spec["dataset"], x)
    cfg = {"seed": 0, **spec["config"]}
    m = alsx.ALS(dim=spec["dim"], epochs=spec["epochs"], progress=False, loss_every=0, **cfg)
    t0 = time.perf_counter()
    m.fit(split.train, split=split, eval_every=1, eval_ks=(20,))
    return {
        "epoch_s": [r["seconds"] for r in m.history_],
        "curve": [r["metrics"][METRIC] for r in m.history_],
        "curve_ndcg": [r["metrics"]["ndcg@20"] for r in m.history_],
        "pack_s": m.pack_stats_.seconds if m.pack_stats_ else None,
        "engine": m.engine_name_,
        "fit_wall_s": time.perf_counter() - t0,
    }


def child_implicit(spec: dict) -> dict:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from alsx.eval.metrics import ranking_metrics

    x = C.load(spec["dataset"])
    split = C.split_of(spec["dataset"], x)
    rows, truth, history = C.eval_parts(split)
    hist = C.csr_to_scipy(history)
    epoch_s: list[float] = []
    curve: list[float] = []
    ndcg: list[float] = []

    def after_epoch(iteration, elapsed, loss, model):
        epoch_s.append(elapsed)  # the iteration's two solves, timed by implicit
        ids, _ = model.recommend(rows, hist, N=20, filter_already_liked_items=True)
        m = ranking_metrics(np.asarray(ids), truth, (20,))
        curve.append(m[METRIC])
        ndcg.append(m["ndcg@20"])

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=spec["dim"], iterations=spec["epochs"], num_threads=2, random_state=0, use_cg=True, **spec["config"]
        )
        t0 = time.perf_counter()
        model.fit(
            C.to_scipy(split.train), show_progress=False, callback=lambda it, el, loss: after_epoch(it, el, loss, model)
        )
    return {"epoch_s": epoch_s, "curve": curve, "curve_ndcg": ndcg, "fit_wall_s": time.perf_counter() - t0}


CHILDREN = {"alsx": child_alsx, "implicit": child_implicit}


# =============================================================================== driver


def reach(curve: list[float], epoch_s: list[float], target: float) -> tuple[int | None, float | None]:
    """(first epoch, 1-based, whose metric is >= target; training seconds up to and including it), or Nones."""
    for i, v in enumerate(curve):
        if v >= target:
            return i + 1, float(sum(epoch_s[: i + 1]))
    return None, None


def measure(dataset: str, epochs: int, timeout: float, defaults: bool = False) -> dict:
    case = CASES[dataset]
    cfg, origin = ({}, "config.DEFAULTS") if defaults else alsx_config(case)
    out = {"dataset": dataset, "dim": case["dim"], "epochs": epochs, "grid_epochs": case["grid_epochs"]}
    out.update(date=C.now(), loadavg_start=C.loadavg(), command=C.command_line(), alsx_origin=origin, runs={})
    for lib, config in (("implicit", case["implicit"]), ("alsx", cfg)):
        spec = {"lib": lib, "dataset": dataset, "dim": case["dim"], "epochs": epochs, "config": config}
        print(f"[{C.now()}] {spec} load {C.loadavg()}", flush=True)
        res = C.run_child(Path(__file__), spec, timeout=timeout)
        out["runs"][lib] = {"config": config, "loadavg_end": C.loadavg(), **res}
        if "error" in res:
            print("   ERROR", res["error"][-800:], flush=True)
            return out
        print(f"   {METRIC} per epoch: {' '.join(f'{v:.4f}' for v in res['curve'])}", flush=True)
    imp = out["runs"]["implicit"]["curve"]
    out["target"] = imp[min(case["grid_epochs"], len(imp)) - 1]
    for r in out["runs"].values():
        r["epoch_reached"], r["seconds_to_target"] = reach(r["curve"], r["epoch_s"], out["target"])
    out["loadavg_end"] = C.loadavg()
    return out


# =============================================================================== report


def _cell(r: dict, target: float) -> str:
    if "error" in r:
        return "failed"
    epoch, seconds = reach(r["curve"], r["epoch_s"], target)
    if seconds is None:
        return f"not reached in {len(r['curve'])} epochs"
    return f"{seconds:.1f} s (epoch {epoch})"


def _ratio(imp: dict, als: dict, target: float) -> str:
    a, i = reach(als["curve"], als["epoch_s"], target)[1], reach(imp["curve"], imp["epoch_s"], target)[1]
    return f"**{a / i:.2f}**" if a is not None and i is not None else "–"


def _cfg(lib: str, cfg: dict) -> str:
    if lib == "implicit":
        return f"reg={cfg['regularization']:g}, α={cfg['alpha']:g}, CG 3"
    names = {"reg": "λ", "unobserved_weight": "α0", "nu": "ν", "init_scale": "σ", "cg_steps": "CG"}
    return ", ".join(
        f"{names.get(k, k)}={v:.3g}" if isinstance(v, float) else f"{names.get(k, k)}={v}"
        for k, v in cfg.items()
        if k != "seed"
    )


def write_report() -> None:
    recs = [r for r in C.read_jsonl(JSONL) if "target" in r]
    lines = [
        "## Time to quality: training seconds to reach implicit's best Recall@20",
        "",
        "- One invocation per row: implicit 0.7.3 at its best grid point, then alsx at its tuned configuration at "
        "the same d, each in its own child interpreter, evaluated on the test part of the shipped split after every "
        "epoch (Recall@20, min(k, |gt|) denominator; every user against all items, training items excluded).",
        "- Target: implicit's Recall@20 after the grid's 15 epochs in the same invocation. Seconds: training only "
        "(implicit's per-iteration time from its fit callback; alsx's per-epoch `history_` seconds, epoch 1 "
        "holding its compile), summed up to the first epoch at or above the target; evaluation, alsx's packing and "
        "implicit's transpose excluded. implicit: `use_cg=True`, `num_threads=2`, BLAS 1 thread (threadpoolctl).",
        "",
        "| data | d | target recall@20 | implicit | alsx | alsx ÷ implicit | to 99 % of the target: implicit / alsx "
        "(÷) | to implicit's peak (its best epoch): implicit / alsx (÷) | implicit best / final | alsx best / final | s/epoch implicit / alsx (alsx epoch 1) | configurations "
        "| date | load avg start→end |",
        "|---|---:|---:|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        imp, als = r["runs"]["implicit"], r["runs"]["alsx"]
        t, t99 = r["target"], 0.99 * r["target"]
        pe = " / ".join(f"{np.mean(x['epoch_s'][1:]):.3f}" for x in (imp, als)) + f" ({als['epoch_s'][0]:.1f})"
        lines.append(
            f"| {r['dataset']} | {r['dim']} | {t:.4f} | {_cell(imp, t)} | {_cell(als, t)} | {_ratio(imp, als, t)} | "
            f"{_cell(imp, t99)} / {_cell(als, t99)} ({_ratio(imp, als, t99)}) | {max(imp['curve']):.4f}: "
            f"{_cell(imp, max(imp['curve']))} / {_cell(als, max(imp['curve']))} "
            f"({_ratio(imp, als, max(imp['curve']))}) | "
            f"{max(imp['curve']):.4f} / {imp['curve'][-1]:.4f} | "
            f"{max(als['curve']):.4f} / {als['curve'][-1]:.4f} | {pe} | implicit {_cfg('implicit', imp['config'])}; "
            f"alsx {_cfg('alsx', als['config'])} ({r['alsx_origin']}) | {r['date']} | "
            f"{r['loadavg_start']} → {r['loadavg_end']} |"
        )
    cmds = sorted({r["command"] for r in recs})
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in cmds), "", f"Machine: {C.machine()}.", ""]
    old = MD.read_text() if MD.exists() else ""
    notes = old[old.index("\n### Notes") :] if "\n### Notes" in old else ""
    MD.write_text("\n".join(lines).rstrip("\n") + ("\n" + notes if notes else "\n"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="ml1m,gowalla")
    p.add_argument("--epochs", type=int, default=30, help="epochs each library trains (evaluated after each)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    p.add_argument("--alsx-defaults", action="store_true", help="alsx at its defaults instead of the case's config")
    p.add_argument("--report", action="store_true")
    C.add_data_arg(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    C.use_data(a)
    if a.child:
        spec = json.loads(a.child)
        C.emit(CHILDREN[spec["lib"]](spec))
        return
    if not a.report:
        for ds in a.datasets.split(","):
            res = measure(ds, a.epochs, a.timeout, a.alsx_defaults)
            C.append_jsonl(JSONL, res)
    write_report()


if __name__ == "__main__":
    main()
