"""Does the validation carve rank a search's best trials as the test part does?

Takes the top N complete trials of an ``alsx tune`` run (benchmarks/out/tune/<dataset>-d<D>/trials.parquet,
written by benchmarks/tune.py), scores each on the search's carve (its value in the search), on carves of two
other seeds (as the final pick does, ``alsx.tune`` with ``--pick-carves 2``), and on the test part after training
on the whole training part (its carve reg_ratio, no size correction; at its best epoch on the search's carve, and
the best of its evaluated epochs).  Writes a table and the rank correlations to benchmarks/results_tune_top.md
(+ .jsonl).

Usage: python benchmarks/tune_top.py --dataset citeulike_a --dim 256 [--top 10]
"""

from __future__ import annotations

import argparse

import numpy as np

import _common as C

MD = C.BENCH / "results_tune_top.md"
JSONL = C.BENCH / "results_tune_top.jsonl"
SEEDS = (1, 2)


def measure(ds: str, dim: int, top: int, epochs: int) -> list[dict]:
    import pandas as pd

    from alsx.config import Packing
    from alsx.core.backends import make_engine
    from alsx.tune import TUNED, resolved
    from alsx.validation import validation_curve, validation_split

    trials = pd.read_parquet(C.BENCH / "out" / "tune" / f"{ds}-d{dim}" / "trials.parquet")
    trials = trials[trials.state == "complete"].sort_values("recall@20", ascending=False).head(top)
    split = C.split_of(ds, C.load(ds))
    parts = {f"carve {s}": validation_split(split.train, 0.2, s) for s in SEEDS} | {"test": split}
    engines: dict[str, object] = {}
    rows = []
    for _, t in trials.iterrows():
        point = {"dim": dim, **{k: t[k] for k in TUNED}}
        point["cg_steps"] = int(point["cg_steps"])
        row = {"trial": int(t.trial), "carve 0": float(t["recall@20"]), "best epoch": int(t.best_epoch)}
        for name, part in parts.items():
            hp = resolved(point, part.train.nnz, part.train.shape)
            if name not in engines:
                engines[name] = make_engine(part.train.csr(), part.train.csc(), hp, Packing())
            curve = dict(validation_curve(engines[name], hp, part, epochs, 3))
            row[name] = max(curve.values())
            if name == "test":
                row["test at its best epoch"] = curve.get(row["best epoch"], float("nan"))
        print(row, flush=True)
        rows.append(row)
    return rows


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def write(rows: list[dict], head: dict) -> None:
    cols = ["carve 0", "carve 1", "carve 2", "mean of 3", "test at its best epoch", "test"]
    for r in rows:
        r["mean of 3"] = float(np.mean([r["carve 0"], r["carve 1"], r["carve 2"]]))
    lines = [
        f"## Ranking of a search's top {len(rows)} trials: carves against the test part ({head['dataset']}, "
        f"d={head['dim']})",
        "",
        f"- command: `{head['command']}`; date {head['date']} UTC; load {head['load'][0]} / {head['load'][1]}",
        "- Recall@20 (|gt| capped at k); carve 0 is the search's own validation carve (its value in the search), "
        "carves 1, 2 are per-row 20 % holdouts of the training part with seeds 1, 2; test: trained on the whole "
        "training part with the trial's carve reg_ratio (no size correction), best over epochs 3, 6, ..., 15, and "
        "at the trial's best epoch on carve 0.",
        "",
        "| trial | best epoch | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(f"| {r['trial']} | {r['best epoch']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    test = [r["test at its best epoch"] for r in rows]
    corr = {c: spearman([r[c] for r in rows], test) for c in cols[:4]}
    lines += [
        "",
        "Spearman rank correlation with the test part (at the best epoch): "
        + ", ".join(f"{c} {v:+.2f}" for c, v in corr.items())
        + ".",
    ]
    for c in ("carve 0", "mean of 3"):
        pick = max(rows, key=lambda r, c=c: r[c])
        lines.append(f"- picked by {c}: trial {pick['trial']}, test {pick['test at its best epoch']:.4f}")
    MD.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_arg(p)
    p.add_argument("--dataset", required=True, choices=sorted(C.FILES))
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--epochs", type=int, default=15)
    a = p.parse_args(argv)
    C.use_data(a)
    load0 = C.loadavg()
    rows = measure(a.dataset, a.dim, a.top, a.epochs)
    head = {"command": C.command_line(), "date": C.now(), "load": [load0, C.loadavg()]}
    head |= {"dataset": a.dataset, "dim": a.dim}
    C.append_jsonl(JSONL, {**head, "rows": rows})
    write(rows, head)


if __name__ == "__main__":
    main()
