"""``alsx evaluate``: score a saved model on the split it was evaluated with (or flags given now)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alsx.cli.common import DATA_KEYS, SPLIT_KEYS, format_table, load_data, make_split


def add_parser(sub) -> None:
    """``alsx evaluate DIR [DATA]``: re-evaluate a saved model on its split."""
    e = sub.add_parser("evaluate", help="evaluate a saved model on its split")
    e.add_argument("model", help="folder written by 'alsx train'")
    e.add_argument("data", nargs="?", default=None, help="data file (default: the one it was trained on)")
    e.add_argument(
        "--split",
        choices=["random", "heldout-rows", "last", "given"],
        default=None,
        help="the split to score (default: the one the model was trained with)",
    )
    e.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: the training run's)")
    e.add_argument(
        "--k", dest="ks", type=int, nargs="+", default=[20, 50], help="cut-offs of the metrics (default %(default)s)"
    )
    e.add_argument("--json", default=None, help="also write the metrics to this file")
    e.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score a split whose test entries the model was trained on (refused otherwise: a model "
        "refit on all input overlaps every split of it); the metrics are inflated",
    )
    e.set_defaults(func=cmd_evaluate)


def _evaluation_data(a: argparse.Namespace, model):
    """(data, split flags) for ``alsx evaluate``: the saved data options and split, flags given now winning."""
    from alsx.errors import DataError, ModelError, UsageError

    cfg = model.config_
    where = Path(a.model) / "config.json"
    saved = cfg.get("data") or {}
    if not isinstance(saved, dict) or not isinstance(cfg.get("split") or {}, dict):
        raise ModelError(f"{where}: 'data' and 'split' must be JSON objects")
    args = argparse.Namespace(
        **{
            **{k: None for k in DATA_KEYS + SPLIT_KEYS},
            "ids": "auto",
            "duplicates": "sum",
            "square": False,
            **saved,
            **(cfg.get("split") or {}),
        }
    )
    for k in DATA_KEYS + SPLIT_KEYS:  # flags given now override the saved ones
        if getattr(a, k, None) is not None:
            setattr(args, k, getattr(a, k))
    path = a.data or saved.get("path")
    if path is None:
        raise UsageError(
            f"{where} names no data file (the model was not trained by 'alsx train FILE'); "
            "pass it: alsx evaluate MODEL DATA"
        )
    if not Path(path).exists():
        raise DataError(
            f"{path}: no such file"
            + ("" if a.data else f" (the data path in {where}); pass the data file: alsx evaluate MODEL DATA")
        )
    if args.split in (None, "none"):
        raise UsageError(f"{a.model} was trained without a split (--split none): pass --split to evaluate it")
    data, _ = load_data(path, args)
    if tuple(data.shape) != tuple(model.shape_):
        raise UsageError(
            f"{path}: {data.shape[0]} rows x {data.shape[1]} columns, but the model in {a.model} was "
            f"trained on {model.shape_[0]} x {model.shape_[1]}: not the data it was trained on"
        )
    return data, args


def cmd_evaluate(a: argparse.Namespace) -> int:
    from alsx.eval.protocol import evaluate
    from alsx.folder import check_overlap
    from alsx.model import ALS

    model = ALS.load(a.model)
    data, args = _evaluation_data(a, model)
    split = make_split(data, args)
    asked = f"--split {args.split}" + ("" if args.split == "given" else f" --split-seed {args.split_seed}")
    overlap = check_overlap(Path(a.model), model.config_, split.test, asked, a.allow_overlap)
    results = evaluate(model.row_embeddings_, model.col_embeddings_, split, model.hparams, tuple(a.ks), model.alpha)
    print(format_table(results, a.ks))
    if overlap is not None:
        print(
            f"WARNING: {overlap['n_trained_on']:,} of {overlap['n_test']:,} test entries were trained on: inflated",
            file=sys.stderr,
        )
        results = {**results, "overlap": overlap}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0
