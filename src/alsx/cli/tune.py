"""``alsx tune`` and the options it gives ``alsx train`` (``--config FILE``, ``--early-stopping``).

    alsx tune DATA --out DIR --dim D --epochs E [--trials N | --minutes M] [--metric recall@20]

writes DIR/trials.parquet (or .csv without pandas/pyarrow), DIR/best.json (``alsx train
--config DIR/best.json`` trains it), DIR/tune.png, and in DIR the model ``alsx train`` writes
with the best configuration: evaluated on the test part of the split when there is one,
then refit on all of DATA.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from alsx.cli import train as train_command
from alsx.cli.common import DATA_KEYS, SPLIT_KEYS, add_cpu_devices, add_data_args, add_split_args, load_data, make_split
from alsx.cli.train_options import CONFIG_ABOUT, apply_config
from alsx.errors import UsageError


def add_parser(subparsers) -> None:
    from alsx.config import (
        DEFAULT_TRIALS,
        METRIC,
        PICK_CARVES,
        PICK_TRIALS,
        PRUNERS,
        SEARCH_EVAL_ROWS,
        VALIDATION_FRACTION,
    )

    p = subparsers.add_parser("tune", help="search hyper-parameters on a validation split, then train the best")
    p.add_argument("data", help="data file, as for alsx train")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("search")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, default=None, help=f"trials (default {DEFAULT_TRIALS})")
    budget.add_argument(
        "--minutes", type=float, default=None, help="search for M minutes (the trial running then finishes)"
    )
    g.add_argument("--metric", default=METRIC, help="validation metric to maximise (default %(default)s)")
    g.add_argument("--max-dim", type=int, default=None, help="also search --dim, 2x, 4x, ... up to this")
    g.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="evaluate (and let the pruner stop a trial) every N epochs and after the last; 0: about "
        "5 times per trial (default %(default)s)",
    )
    g.add_argument(
        "--validation-fraction",
        type=float,
        default=VALIDATION_FRACTION,
        help="share of each training row held out for validation (default %(default)s)",
    )
    g.add_argument(
        "--eval-rows",
        type=int,
        default=SEARCH_EVAL_ROWS,
        help="score at most N validation rows per evaluation, the same seeded sample in every trial "
        "(0: all; default %(default)s)",
    )
    g.add_argument(
        "--pick-carves",
        type=int,
        default=PICK_CARVES,
        help=f"re-score the best {PICK_TRIALS} trials on N more validation carves (other seeds) and keep the best "
        "mean (0: the search's best trial; default %(default)s)",
    )
    g.add_argument(
        "--no-size-correction",
        dest="size_correction",
        action="store_false",
        help="keep the validation carve's best --reg-ratio for the final fit instead of moving it to the "
        "amount of data that fit gets (measured on a carve of the carve, a few extra fits)",
    )
    g.add_argument(
        "--pruner", choices=PRUNERS, default="hyperband", help="stop bad trials early by epoch (default %(default)s)"
    )
    m = p.add_argument_group("model (the rest is searched; trial 0 is alsx's defaults)")
    m.add_argument(
        "--dim", type=int, default=64, help="embedding dimension (the smallest with --max-dim; default %(default)s)"
    )
    m.add_argument("--epochs", type=int, default=15, help="most epochs per trial (default %(default)s)")
    m.add_argument("--solver", choices=["cg", "block"], default="cg", help="(default %(default)s)")
    m.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="confidence c = 1 + alpha * value from the value column (default: binary)",
    )
    m.add_argument(
        "--seed", type=int, default=0, help="seeds the split, the tables and the search (default %(default)s)"
    )
    m.add_argument(
        "--backend", choices=["auto", "cpu", "jax"], default="auto", help="as for alsx train (default %(default)s)"
    )
    add_data_args(p)
    add_split_args(p, default="none")
    p.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="with a split: save the best configuration trained on the split's training part",
    )
    add_cpu_devices(p, default=1)
    p.set_defaults(func=cmd_tune)


def cmd_tune(a: argparse.Namespace) -> int:
    from alsx.cli.guard import check_split, check_split_input
    from alsx.validation import parse_metric

    try:
        parse_metric(a.metric)
    except ValueError as e:
        raise UsageError(f"--metric: {e}") from None
    if a.trials is not None and a.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {a.trials}")
    for flag, v in (("--eval-rows", a.eval_rows), ("--pick-carves", a.pick_carves)):
        if v < 0:
            raise UsageError(f"{flag} must be >= 0, got {v}")
    if a.minutes is not None and not a.minutes > 0:
        raise UsageError(f"--minutes must be > 0, got {a.minutes}")
    data, _ = load_data(a.data, a)
    check_split_input(data, a)
    split = make_split(data, a)
    check_split(split, a)
    from alsx.tune import tune  # JAX loads here, after every check of the flags and the data

    train = data if split is None else split.train  # the search never sees the test part
    print(
        f"tune: searching on {train.nnz:,} training entries ({a.validation_fraction:.0%} of each row for "
        f"validation){'' if split is None else f'; the {split.test.nnz:,} test entries are not read'}",
        file=sys.stderr,
    )
    t = time.perf_counter()
    result = tune(
        train,
        dim=a.dim,
        epochs=a.epochs,
        trials=a.trials,
        minutes=a.minutes,
        metric=a.metric,
        max_dim=a.max_dim,
        solver=a.solver,
        eval_every=a.eval_every,
        validation_fraction=a.validation_fraction,
        eval_rows=a.eval_rows,
        seed=a.seed,
        pruner=a.pruner,
        pick_carves=a.pick_carves,
        backend=a.backend,
        alpha=a.alpha,
        size_correction=a.size_correction,
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = write_trials(result.trials, out)
    best = {
        k: result.params[k]
        for k in (
            "dim",
            "epochs",
            "reg",
            "unobserved_weight",
            "unobserved_ratio",
            "reg_ratio",
            "nu",
            "init_scale",
            "cg_steps",
            "solver",
            "init",
            "seed",
        )
    }
    top = next(t for t in result.trials if t["trial"] == result.best_trial)
    best[CONFIG_ABOUT] = {
        "tool": "alsx tune",
        "data": str(Path(a.data).resolve()),
        "split": a.split,
        f"validation {a.metric}": result.value,
        "trial": result.best_trial,
        "validation reg, unobserved_weight": [top["reg"], top["unobserved_weight"]],  # the ratios on the carve
        "trials": len(result.trials),
        "validation rows scored": list(result.scored_rows),  # a sample of them (--eval-rows)
        "search_seconds": round(time.perf_counter() - t, 1),
    }
    if len(result.top) > 1:  # the final pick's mean over carves, per trial
        best[CONFIG_ABOUT]["top trials, mean over carves"] = {str(n): v for n, v in result.top.items()}
        print(
            f"tune: of the best {len(result.top)} trials, {result.best_trial} has the best mean {a.metric} over "
            f"{1 + a.pick_carves} validation carves ({result.top[result.best_trial]:.4f})",
            file=sys.stderr,
        )
    c = result.correction
    if c is not None:
        best[CONFIG_ABOUT]["size correction"] = c.as_dict()
        print(
            f"tune: --reg-ratio {c.reg_ratio:.4g} is best on the validation carve; {c.corrected:.4g} for all "
            f"{train.nnz:,} training entries (a carve of the carve wanted {2 ** (c.peak_b - c.peak_a):.2f}x "
            f"more; {c.fits} fits)",
            file=sys.stderr,
        )
    (out / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    png = plot_trials(result.trials, a.metric, result.best_trial, out / "tune.png")
    print(
        f"tune: best validation {a.metric} {result.value:.4f} (trial {result.best_trial} of {len(result.trials)}, "
        f"epoch {result.params['epochs']}; {result.scored_rows[0]:,} of {result.scored_rows[1]:,} validation rows "
        f"scored) in {result.seconds:.0f}s; wrote {table.name}, best.json, {png.name}",
        file=sys.stderr,
    )
    return train_command.cmd_train(train_args(a, out / "best.json"))


def train_args(a: argparse.Namespace, config: Path) -> argparse.Namespace:
    """``alsx train DATA --out DIR --config best.json`` with tune's data and split flags."""
    parser = argparse.ArgumentParser(prog="alsx")
    train_command.add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["train", a.data, "--out", a.out, "--config", str(config), "--cpu-devices", str(a.cpu_devices)]
    args = apply_config(parser, parser.parse_args(argv), argv)
    for k in (*DATA_KEYS, *SPLIT_KEYS, "ks", "alpha", "backend", "refit"):
        setattr(args, k, getattr(a, k))
    return args


def write_trials(rows: list[dict], out: Path) -> Path:
    """DIR/trials.parquet (pandas + pyarrow), else DIR/trials.csv."""
    try:
        import pandas as pd

        path = out / "trials.parquet"
        pd.DataFrame(rows).to_parquet(path, index=False)
        return path
    except ImportError:
        import csv

        path = out / "trials.csv"
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
        return path


def plot_trials(rows: list[dict], metric: str, best: int, path: Path) -> Path:
    """Left: each trial's best validation metric (pruned grey) and the best so far; right: the best
    trial's metric per evaluated epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for state, color in (("complete", "tab:blue"), ("pruned", "tab:gray")):
        pts = [(r["trial"], r[metric]) for r in rows if r["state"] == state]
        if pts:
            ax1.scatter(*zip(*pts, strict=True), color=color, label=state, s=18)
    so_far, top = [], -float("inf")
    for r in rows:
        if r["state"] == "complete" and math.isfinite(r[metric]):
            top = max(top, r[metric])
        so_far.append(top if top > -float("inf") else float("nan"))
    ax1.step([r["trial"] for r in rows], so_far, where="post", color="tab:green", label="best so far")
    ax1.set_xlabel("trial")
    ax1.set_ylabel(f"validation {metric}")
    ax1.legend()
    row = next(r for r in rows if r["trial"] == best)
    curve = sorted(
        (int(k.removeprefix("epoch_")), v) for k, v in row.items() if k.startswith("epoch_") and math.isfinite(v)
    )
    ax2.plot(*zip(*curve, strict=True), marker="o", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"validation {metric}")
    ax2.set_title(f"best trial ({best})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
