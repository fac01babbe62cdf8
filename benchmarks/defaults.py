"""Choosing alsx's defaults: candidate configurations on every shared data set, against implicit's defaults.

  # every candidate (alsx) and implicit's defaults, at one d and number of epochs, on every data set
  python benchmarks/defaults.py --task grid --dim 64 --epochs 15
  # each library exactly as shipped (alsx: config.DEFAULTS; implicit: its constructor's defaults)
  python benchmarks/defaults.py --task shipped
  python benchmarks/defaults.py --report      # rewrite results_defaults.md only

Each data set is scored on its evaluation split (``_common.split_of``: the shipped split of ml1m and gowalla,
a per-row 20 % holdout of ml100k and citeulike_a, held-out rows of cnr-2000) with Recall@20 (min(k, |gt|)
denominator).  The rule that picks the defaults (``pick``): the candidate whose worst ratio to the best
candidate of each data set is highest -- it loses least in the worst case -- among those no worse than implicit's
defaults anywhere.  One child process per data set and library (``compare.py``'s children); BLAS limited to one
thread for implicit.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
from pathlib import Path

import _common as C
import compare

JSONL = C.BENCH / "results_defaults.jsonl"
MD = C.BENCH / "results_defaults.md"
DATASETS = ("ml100k", "ml1m", "citeulike_a", "gowalla", "cnr")
METRIC = "recall@20"
# nu = 1 makes lambda_u = reg * (|I_u| + alpha0 n) scale with a row's total weight, so one reg can fit catalogues of
# any size (Rendle et al. 2021); alpha0 is what the data sets disagree on (tuned: citeulike_a ~0.005, gowalla ~0.03,
# ml1m ~0.1-0.25), so the grid spans it widely.
GRID = {"reg": [0.001, 0.003, 0.01, 0.03], "unobserved_weight": [0.01, 0.03, 0.1, 0.3]}


def candidates(spec: str | None) -> list[dict]:
    """GRID's points (or 'key=v1,v2 key2=v3' points, strings kept for init) as alsx keyword arguments."""
    g = GRID if not spec else {kv.split("=")[0]: [_num(v) for v in kv.split("=")[1].split(",")] for kv in spec.split()}
    return [dict(zip(g, vals, strict=True)) for vals in itertools.product(*g.values())]


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def density(ds: str) -> float:
    """nnz / (n_rows n_cols) of a data set's training part (its evaluation split's)."""
    train = C.split_of(ds, C.load(ds)).train
    return train.nnz / (train.shape[0] * train.shape[1])


def absolute(cfg: dict, dens: float) -> dict:
    """alsx keyword arguments of a candidate: 'ratio' r gives alpha0 = r * density (all unobserved pairs weigh r
    times the observed ones in total), 'rel_reg' s gives reg = s * alpha0; other keys pass through."""
    out = {k: v for k, v in cfg.items() if k not in ("ratio", "rel_reg")}
    if "ratio" in cfg:
        out["unobserved_weight"] = cfg["ratio"] * dens
        if "rel_reg" in cfg:
            out["reg"] = cfg["rel_reg"] * out["unobserved_weight"]
    return out


def implicit_defaults() -> dict:
    """implicit's constructor defaults: factors, iterations, regularization, alpha."""
    from implicit.cpu.als import AlternatingLeastSquares

    sig = inspect.signature(AlternatingLeastSquares.__init__).parameters
    return {k: sig[k].default for k in ("factors", "iterations", "regularization", "alpha")}


def measure(a) -> None:
    base = {"task": a.task, "date": C.now(), "command": C.command_line()}
    imp = implicit_defaults()
    if a.task == "grid":
        jobs = [("alsx", a.dim, a.epochs, candidates(a.grid)), ("implicit", a.dim, a.epochs, [{}])]
    else:
        from alsx.config import DEFAULTS

        jobs = [
            ("alsx", DEFAULTS["dim"], DEFAULTS["epochs"], [{}]),
            ("implicit", imp["factors"], imp["iterations"], [{}]),
        ]
    for ds in a.datasets:
        dens = density(ds) if any("ratio" in c for _, _, _, cs in jobs for c in cs) else None
        for lib, dim, epochs, labels in jobs:
            if lib not in a.libs:
                continue
            configs = [absolute(c, dens) for c in labels]
            spec = {"lib": lib, "dataset": ds, "dim": dim, "epochs": epochs, "configs": configs, "alsx_backend": "auto"}
            load0 = C.loadavg()
            print(f"[{C.now()}] {lib} {ds} d={dim} {epochs} epochs: {len(configs)} configs, load {load0}", flush=True)
            res = C.run_child(Path(compare.__file__), spec, timeout=a.timeout)
            rec = {**base, "lib": lib, "dataset": ds, "dim": dim, "epochs": epochs, "loadavg": [load0, C.loadavg()]}
            for run, label in zip(res.get("runs", []), labels, strict=False):
                run["label"] = label  # the candidate as named in the grid (relative keys kept)
            C.append_jsonl(JSONL, {**rec, "density": dens, **res})
            for r in res.get("runs", []):
                print(
                    f"   {r['config'] or 'defaults'} {METRIC}={r['metrics'].get(METRIC, float('nan')):.4f}", flush=True
                )
            if "error" in res:
                print("   ERROR", res["error"][-600:], flush=True)


def _key(cfg: dict) -> str:
    if "ratio" in cfg:
        rest = {k: v for k, v in cfg.items() if k not in ("ratio", "rel_reg")}
        rel = f"α0={cfg['ratio']:g}×density" + (f", λ={cfg['rel_reg']:g}×α0" if "rel_reg" in cfg else "")
        return ", ".join([rel] + ([compare._cfg(rest)] if rest else []))
    return compare._cfg(cfg) if cfg else "defaults"


def pick(table: dict[str, dict[str, float]], floor: dict[str, float]) -> tuple[str, dict[str, float]]:
    """The candidate with the highest worst-case ratio to each data set's best candidate, among those at least
    ``floor`` (implicit's defaults) on every data set (all candidates when none is); returns it and its ratios.

    ``table``: candidate -> data set -> metric (only candidates measured on every data set of ``floor``).
    """
    best = {ds: max(row[ds] for row in table.values()) for ds in floor}
    ratios = {c: {ds: row[ds] / best[ds] for ds in floor} for c, row in table.items()}
    ok = [c for c, row in table.items() if all(row[ds] >= floor[ds] for ds in floor)] or list(table)
    chosen = max(ok, key=lambda c: min(ratios[c].values()))
    return chosen, ratios[chosen]


def _latest(records: list[dict], **kw) -> dict[tuple, dict]:
    """(dataset, config key) -> the latest run matching ``kw``."""
    out = {}
    for r in records:
        if all(r.get(k) == v for k, v in kw.items()) and "error" not in r:
            for run in r["runs"]:
                out[(r["dataset"], _key(run.get("label", run["config"])))] = run
    return out


def write_report() -> None:
    records = C.read_jsonl(JSONL)
    lines = ["## Choosing the defaults: candidates on every shared data set vs implicit's defaults", ""]
    lines += [__doc__.split("\n\n", 2)[2].strip(), ""]
    for dim, epochs in sorted({(r["dim"], r["epochs"]) for r in records if r["task"] == "grid" and r["lib"] == "alsx"}):
        alsx = _latest(records, task="grid", lib="alsx", dim=dim, epochs=epochs)
        imp = _latest(records, task="grid", lib="implicit", dim=dim, epochs=epochs)
        dss = [ds for ds in DATASETS if (ds, "defaults") in imp]
        table = {}
        for (ds, cfg), run in alsx.items():
            table.setdefault(cfg, {})[ds] = run["metrics"][METRIC]
        partial = {c: row for c, row in table.items() if not all(ds in row for ds in dss)}
        table = {c: row for c, row in table.items() if all(ds in row for ds in dss)}
        if not table or not dss:
            continue
        floor = {ds: imp[(ds, "defaults")]["metrics"][METRIC] for ds in dss}
        chosen, _ = pick(table, floor)
        best = {ds: max(row[ds] for row in [*table.values(), *partial.values()] if ds in row) for ds in dss}
        lines += [
            f"### d={dim}, {epochs} epochs: {METRIC} (÷ the best candidate of the data set)",
            "",
            "| alsx candidate | " + " | ".join(dss) + " | worst ratio | ≥ implicit defaults everywhere |",
            "|---|" + "---:|" * len(dss) + "---:|---|",
        ]
        order = sorted(table, key=lambda c: -min(table[c][ds] / best[ds] for ds in dss))
        for c in order:
            row = table[c]
            cells = [f"{row[ds]:.4f} ({row[ds] / best[ds]:.3f})" for ds in dss]
            worst = min(row[ds] / best[ds] for ds in dss)
            ok = "yes" if all(row[ds] >= floor[ds] for ds in dss) else "no"
            name = f"**{c}** (chosen)" if c == chosen else c
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst:.3f} | {ok} |")
        for c, row in partial.items():  # not measured on every data set: shown, never chosen
            cells = [f"{row[ds]:.4f} ({row[ds] / best[ds]:.3f})" if ds in row else "—" for ds in dss]
            lines.append(f"| {c} | " + " | ".join(cells) + " | (not run everywhere) | |")
        lines.append("| implicit defaults | " + " | ".join(f"{floor[ds]:.4f}" for ds in dss) + " | | |")
        lines.append("")
    shipped_a = _latest(records, task="shipped", lib="alsx")
    shipped_i = _latest(records, task="shipped", lib="implicit")
    dss = [ds for ds in DATASETS if (ds, "defaults") in shipped_a and (ds, "defaults") in shipped_i]
    if dss:
        d_a = next(r for r in reversed(records) if r["task"] == "shipped" and r["lib"] == "alsx")
        d_i = next(r for r in reversed(records) if r["task"] == "shipped" and r["lib"] == "implicit")
        lines += [
            f"### As shipped: alsx (d={d_a['dim']}, {d_a['epochs']} epochs, config.DEFAULTS) vs implicit "
            f"(factors={d_i['dim']}, {d_i['epochs']} iterations, {_key({k: v for k, v in implicit_defaults().items() if k in ('regularization', 'alpha')})})",
            "",
            "| data set | alsx recall@20 | implicit recall@20 | alsx ÷ implicit | alsx ndcg@20 | implicit ndcg@20 | alsx fit s | implicit fit s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for ds in dss:
            a, i = shipped_a[(ds, "defaults")], shipped_i[(ds, "defaults")]
            ma, mi = a["metrics"], i["metrics"]
            lines.append(
                f"| {ds} | {ma[METRIC]:.4f} | {mi[METRIC]:.4f} | {ma[METRIC] / mi[METRIC]:.3f} | {ma['ndcg@20']:.4f} | "
                f"{mi['ndcg@20']:.4f} | {a['fit_wall_s']:.1f} | {i['fit_wall_s']:.1f} |"
            )
        lines.append("")
    cmds = sorted({r["command"] for r in records})
    loads = sorted({ld for r in records for ld in r["loadavg"]})
    lines += ["Commands: " + "; ".join(f"`{c}`" for c in cmds), ""]
    if loads:
        lines += [f"Load averages at the children's starts and ends: {loads[0]} … {loads[-1]} (2 cores).", ""]
    MD.write_text("\n".join(lines) + "\n")
    print(f"wrote {MD}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("grid", "shipped"), default="grid", help="candidates at one d, or as shipped")
    p.add_argument("--dim", type=int, default=64, help="d of the grid task")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the grid task")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated data sets")
    p.add_argument("--libs", default="alsx,implicit", help="comma-separated: alsx, implicit")
    p.add_argument("--grid", default=None, help="override the candidates: 'reg=0.01,0.03 unobserved_weight=0.1'")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    p.add_argument("--report", action="store_true", help="only rewrite results_defaults.md")
    C.add_data_arg(p)
    a = p.parse_args(argv)
    C.use_data(a)
    a.datasets, a.libs = a.datasets.split(","), a.libs.split(",")
    if not a.report:
        measure(a)
    write_report()


if __name__ == "__main__":
    main()
