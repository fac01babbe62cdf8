"""What ``alsx train`` leaves in OUT (config, history, metrics, tables, the entries it was trained
on) and its per-phase profile: shared by the one-process and the multi-process path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alsx.cli.common import DATA_KEYS, SPLIT_KEYS, fold_in_heldout, format_table, plot_history
from alsx.config import AUTO

WEIGHT_FLAGS = (("--reg", "reg"), ("--unobserved-weight", "unobserved_weight"))


def print_profile(model, train) -> dict:
    """Per-phase seconds of the row and column half-steps at the trained tables (one device), printed."""
    from alsx.core.profile import profile_model

    result = profile_model(model, train)
    phases = [k for k in result["rows"] if k not in ("solve_gflops", "sgemm_gflops")]
    print("phase seconds   " + "".join(f"{p:>17}" for p in phases))
    for name, r in result.items():
        print(f"{name:<16}" + "".join(f"{r[p]:>17.3f}" for p in phases))
    r = result["rows"]
    print(f"solve phase {r['solve_gflops']:.1f} GFLOP/s against a measured sgemm of {r['sgemm_gflops']:.1f} GFLOP/s")
    return result


def trained_on(a: argparse.Namespace, split, refit: bool, nnz: int) -> dict:
    """config.json's record of what the saved tables were trained on (read by ``alsx evaluate``)."""
    from alsx.folder import TRAINED_FILE

    if split is None:
        return {"part": "all input", "nnz": int(nnz), "refit": False, "split": None}
    params = {k: getattr(a, k) for k in SPLIT_KEYS}
    if refit:
        return {"part": "all input", "nnz": int(nnz), "refit": True, "evaluated_before_refit_on": params}
    return {
        "part": "the split's training part",
        "nnz": int(nnz),
        "refit": False,
        "split": params,
        "entries": TRAINED_FILE,
    }


def write_outputs(
    a: argparse.Namespace,
    model,
    split,
    summary,
    results,
    seconds: float,
    train,
    tables: bool = True,
    seen=None,
    split_model=None,
    trained=None,
    refit_seconds: float = 0.0,
) -> None:
    """What ``alsx train`` leaves in OUT (process 0 of a multi-process run; ``tables=False``:
    the tables were written already, shard by shard).

    ``seen``: all input entries (Interactions), written as train.npz so ``recommend`` excludes
    everything a row had; ``split_model``: the split-trained model when ``model`` is its refit
    on all input (its history goes to split_history.json); ``trained``: the split's training
    entries of a model kept without refit (default ``model.train_``), written as trained.npz;
    ``seconds`` / ``refit_seconds``: the split-trained fit's and the refit's.
    """
    import numpy as np

    from alsx.folder import TRAINED_FILE

    out = Path(a.out)
    refit = split_model is not None
    fitted = model.train_ if trained is None else trained  # CSR the tables were trained on
    if seen is not None:
        model.train_ = seen.csr(a.alpha)
    model.save(out, tables=tables)
    stale = out / TRAINED_FILE
    if split is not None and not refit:
        np.savez(
            stale, indptr=fitted.indptr, indices=fitted.indices, values=fitted.values, n_cols=np.int64(fitted.n_cols)
        )
    elif stale.exists():  # left by an earlier run into the same folder
        stale.unlink()
    if refit:
        (out / "split_history.json").write_text(json.dumps(split_model.history_, indent=2))
    cfg = json.loads((out / "config.json").read_text())
    cfg["data"] = {"path": str(Path(a.data).resolve()), **{k: getattr(a, k) for k in DATA_KEYS}}
    cfg["split"] = {k: getattr(a, k) for k in SPLIT_KEYS}
    cfg["trained_on"] = trained_on(a, split, refit, fitted.nnz)
    cfg["ingest"] = summary.to_dict()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if results is not None:
        note = (
            "the model trained on the split's training part, before the refit on all input that was saved"
            if refit
            else "the saved model (trained on the split's training part)"
        )
        evaluated = {"split": {k: getattr(a, k) for k in SPLIT_KEYS}, "scored": note}
        (out / "metrics.json").write_text(json.dumps({**results, "evaluated": evaluated}, indent=2))
        print(format_table(results, a.ks))
    if a.profile:
        (out / "profile.json").write_text(json.dumps(print_profile(model, train), indent=2))
    if tables and not refit:  # a refit model trained every row: nothing to fold in
        fold_in_heldout(model, split)
        np.save(out / "row_embeddings.npy", model.row_embeddings_)
    history = [dict(h) for h in (split_model or model).history_]  # the evaluated fit, its final scores last
    if results is not None and history and "metrics" not in history[-1]:
        history[-1]["metrics"] = results["model"]
    if history:
        plot_history(history, out / "training.png", f"alsx train: d={model.hparams.dim}, {Path(a.data).name}")
    what = "on all input" if split is None else "on the split's training part"
    again = f", then refit on all input in {refit_seconds:.1f}s" if refit else ""
    auto = [f"{flag} {getattr(model.hparams, k):.3g}" for flag, k in WEIGHT_FLAGS if getattr(a, k, None) == AUTO]
    weights = f" ({', '.join(auto)} from 'auto')" if auto else ""
    print(f"trained {model.epochs} epochs {what} in {seconds:.1f}s{again}{weights}; wrote {out}")
