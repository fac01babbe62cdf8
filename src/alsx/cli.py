"""Command line: subcommands parse flags and call the library.

    alsx demo                                  built-in synthetic graph, end to end
    alsx train DATA --out DIR [options]        fit, evaluate, refit on all input, save
    alsx evaluate DIR DATA                     re-evaluate a --no-refit model on its split
    alsx recommend DIR ROW [ROW ...] -k N      top-k unseen columns per row (--all, --out recs.parquet)
    alsx similar DIR ID [ID ...]               most similar columns (or rows)
    alsx export DIR --to OUT                   embeddings as Parquet / npy, an ANN index
    alsx webgraph {build,synth} ...            WebGraph data sets
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULTS = {  # measured: see README "Defaults" and benchmarks/RESULTS.md
    "dim": 128, "epochs": 16, "reg": 0.003, "unobserved_weight": 0.03, "nu": 1.0,
    "solver": "cg", "cg_steps": 3, "dtype": "float32", "seed": 0, "init": "normal", "init_scale": 0.1,
}


# ---------------------------------------------------------------------------- arguments
def _add_model_args(p: argparse.ArgumentParser, dim: int = DEFAULTS["dim"], epochs: int = DEFAULTS["epochs"]) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--dim", type=int, default=dim, help="embedding dimension (default %(default)s)")
    g.add_argument("--epochs", type=int, default=epochs, help="full epochs (default %(default)s)")
    g.add_argument("--reg", type=float, default=DEFAULTS["reg"], help="lambda (default %(default)s)")
    g.add_argument("--unobserved-weight", type=float, default=DEFAULTS["unobserved_weight"],
                   help="alpha0, weight of all pairs pushed to 0 (default %(default)s)")
    g.add_argument("--nu", type=float, default=DEFAULTS["nu"],
                   help="frequency scaling of the regulariser: 0 plain, 1 Rendle et al. (default %(default)s)")
    g.add_argument("--solver", choices=["cg", "cholesky", "block"], default=DEFAULTS["solver"],
                   help="cg: matrix-free conjugate gradient; cholesky: exact; block: iALS++ subspace sweeps "
                        "(for large --dim; default %(default)s)")
    g.add_argument("--cg-steps", type=int, default=DEFAULTS["cg_steps"],
                   help="with --solver cg: conjugate-gradient steps per row solve, warm-started (default %(default)s)")
    g.add_argument("--block-size", type=int, default=0,
                   help="subspace size of --solver block (divides --dim); 0: 1 on the cpu backend, the largest "
                        "divisor of --dim up to 64 with jax (default %(default)s)")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=DEFAULTS["dtype"],
                   help="table storage (default %(default)s)")
    g.add_argument("--alpha", type=float, default=None,
                   help="confidence c = 1 + alpha * value from the value column (default: binary)")
    g.add_argument("--tied", action="store_true", help="one table for rows and columns (square graphs)")
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the initial tables (default %(default)s)")
    g.add_argument("--init", choices=["normal", "uniform"], default=DEFAULTS["init"],
                   help="start tables N(0, s^2) or U[0, 2s), s = init-scale / sqrt(dim) (default %(default)s)")
    g.add_argument("--init-scale", type=float, default=DEFAULTS["init_scale"], help="(default %(default)s)")
    g.add_argument("--backend", choices=["auto", "cpu", "jax"], default="auto",
                   help="cpu: fused Numba CG kernels on all cores; jax: XLA on every device (sharded when "
                        "there are several); auto: cpu on a CPU-only single-process CG float32 run, "
                        "else jax (default %(default)s)")


def _add_cpu_devices(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--cpu-devices", type=int, default=default, metavar="N",
                   help="with --backend jax: split the CPU into N JAX devices, the tables sharded over them "
                        "(XLA runs one device per core, so this is how a JAX CPU run uses every core); "
                        "0 = one per core (default %(default)s; ignored on GPUs)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--format", dest="fmt", default=None, help="npz, csv, tsv, parquet, edgelist (default: by suffix)")
    g.add_argument("--row", default=None, help="row column: header name or 0-based number")
    g.add_argument("--col", default=None, help="column column: header name or 0-based number")
    g.add_argument("--value", default=None, help="value column (with --alpha gives confidences)")
    g.add_argument("--timestamp", default=None, help="timestamp column (for --split last)")
    g.add_argument("--ids", choices=["auto", "index", "map"], default="auto",
                   help="'index': non-negative integer indices kept as given; 'map': arbitrary ids; auto: 'index' for "
                        "integer ids, else 'map' (default %(default)s)")
    g.add_argument("--square", action="store_true", help="rows and columns share one vocabulary (graphs)")
    g.add_argument("--duplicates", choices=["sum", "error", "first"], default="sum",
                   help="repeated (row, column) entries: add their values, stop with an error, or keep the first "
                        "(default %(default)s)")


def _add_split_args(p: argparse.ArgumentParser, default: str = "random") -> None:
    g = p.add_argument_group("split")
    g.add_argument("--split", choices=["none", "random", "heldout-rows", "last", "given"], default=default,
                   help="random: per-row holdout; heldout-rows: rows never trained, folded in at evaluation; "
                        "last: latest entries by timestamp; given: the input's is_test mask (default %(default)s)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="random: share of each row held out (default %(default)s)")
    g.add_argument("--heldout-fraction", type=float, default=0.1, help="heldout-rows: share of rows held out (default %(default)s)")
    g.add_argument("--history-fraction", type=float, default=0.8, help="heldout-rows: share folded in (default %(default)s)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the split (default %(default)s)")
    g.add_argument("--k", dest="ks", type=int, nargs="+", default=[20, 50],
                   help="cut-offs of the metrics (default %(default)s)")


SPLIT_KEYS = ("split", "test_fraction", "heldout_fraction", "history_fraction", "split_seed")
DATA_KEYS = ("fmt", "row", "col", "value", "timestamp", "ids", "square", "duplicates")


# ---------------------------------------------------------------------------- helpers
def _load(path: str, a: argparse.Namespace):
    from alsx.data.ingest import load_interactions

    col = lambda v: int(v) if v is not None and str(v).isdigit() else v  # noqa: E731
    data, summary = load_interactions(
        path, fmt=a.fmt, row=col(a.row), col=col(a.col), value=col(a.value), timestamp=col(a.timestamp),
        ids=a.ids, square=a.square, duplicates=a.duplicates)
    print(f"ingest: {summary}", file=sys.stderr)
    return data, summary


def split_options(a: argparse.Namespace) -> dict:
    """Keyword arguments of ``alsx.data.split.by_name`` from the --split flags."""
    return {"fraction": a.test_fraction, "row_fraction": a.heldout_fraction, "history_fraction": a.history_fraction,
            "seed": a.split_seed}


def make_split(data, a: argparse.Namespace):
    from alsx.data.split import by_name

    return by_name(a.split, data, **split_options(a))


def _model(a: argparse.Namespace, progress: bool = True):
    from alsx.model import ALS

    return ALS(dim=a.dim, epochs=a.epochs, reg=a.reg, unobserved_weight=a.unobserved_weight, nu=a.nu,
               solver=a.solver, cg_steps=a.cg_steps, block_size=a.block_size, dtype=a.dtype, alpha=a.alpha, tied=a.tied,
               seed=a.seed, init=a.init, init_scale=a.init_scale, progress=progress,
               loss_every=getattr(a, "loss_every", 1), backend=a.backend)


def format_table(results: dict[str, dict[str, float]], ks) -> str:
    names = [f"{m}@{k}" for k in ks for m in ("recall", "recall_gt", "ndcg")]
    lines = [f"{'model':<12}" + "".join(f"{n:>13}" for n in names)]
    for model, metrics in results.items():
        lines.append(f"{model:<12}" + "".join(f"{metrics.get(n, float('nan')):>13.4f}" for n in names))
    return "\n".join(lines)


def _fold_in_heldout(model, split) -> None:
    """Gives held-out rows their folded-in embeddings, so every row of the saved table is usable."""
    from alsx.eval.protocol import _compact_rows
    from alsx.serve.foldin import fold_in

    if split is None or split.heldout_rows is None or split.foldin is None:
        return
    rows = split.heldout_rows
    hist = _compact_rows(split.foldin, rows, model.alpha)
    model.row_embeddings_[rows] = fold_in(model.col_embeddings_, hist, model.hparams)


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    lossy = [h for h in history if "loss" in h]  # --loss-every N: not every epoch has one
    for part in ("total", "observed", "unobserved", "regularisation"):
        ax1.plot([h["epoch"] for h in lossy], [h["loss"][part] for h in lossy], marker="o", label=part)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.set_title("training loss")
    scored = [h for h in history if "metrics" in h]
    metric = min((m for h in scored for m in h["metrics"] if m.startswith("recall@")),
                 key=lambda m: (m != "recall@20", int(m.split("@")[1])), default="recall@20")  # --k may lack 20
    rec = [(h["epoch"], h["metrics"][metric]) for h in scored if metric in h["metrics"]]
    if rec:
        ax2.plot(*zip(*rec), marker="o", color="tab:green", label="alsx")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric.capitalize())
    ax2.set_title(f"held-out {metric.capitalize()}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- commands
def _checkpointer(a: argparse.Namespace):
    """The Checkpointer asked for by --checkpoint-every/--checkpoint-minutes/--resume, or None.

    ``--resume DIR`` must find a finished checkpoint (UsageError otherwise: a typo'd folder
    must not retrain from epoch 1); "resume if there is one" is a rerun of the same command
    with --checkpoint-every, which continues from OUT/checkpoints by itself.  A resumed run
    saves its further checkpoints in the folder it resumed from.
    """
    if not (a.checkpoint_every or a.checkpoint_minutes or a.resume):
        return None
    from alsx.checkpoint import CheckpointOptions, Checkpointer, describe_folder
    from alsx.errors import UsageError

    if a.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every {a.checkpoint_every}: must be >= 0 (0: only at the end)")
    if a.checkpoint_minutes is not None and not a.checkpoint_minutes > 0:
        raise UsageError(f"--checkpoint-minutes {a.checkpoint_minutes}: must be > 0")
    if a.resume:
        root = Path(a.resume)
        directory = root / "checkpoints" if (root / "checkpoints").is_dir() else root
        if not directory.is_dir():
            what = "is a file, not a folder" if root.exists() else "no such folder"
            raise UsageError(f"--resume {a.resume}: {what}; give the --out folder of a run with --checkpoint-every "
                             "(or its checkpoints/)")
    else:
        directory = Path(a.out) / "checkpoints"
    ck = Checkpointer(CheckpointOptions(str(directory.resolve()), every_epochs=a.checkpoint_every or 0,
                                        every_minutes=a.checkpoint_minutes))
    if a.resume and not ck.epochs():
        ck.close()
        raise UsageError(f"--resume {a.resume}: no finished checkpoint in {directory} ({describe_folder(directory)}); "
                         "drop --resume to train from epoch 1")
    return ck


def _profile(model, train) -> dict:
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


def cmd_train(a: argparse.Namespace) -> int:
    from alsx.cli_guard import check_split, check_split_input
    from alsx.distributed import init_from_args
    from alsx.errors import UsageError
    from alsx.eval.protocol import evaluate

    try:
        topo = init_from_args(a)
    except ValueError as e:  # the multi-process flags (their messages name the flag)
        raise UsageError(str(e)) from None
    from alsx.webgraph.train import cmd_train_dataset, is_dataset

    if is_dataset(a.data) or topo.process_count > 1:
        # A WebGraph dataset directory (streamed from disk), or one input file of which each
        # process parses only its part.
        if a.early_stopping:  # tune: early stopping runs in the one-process, in-memory path only
            raise UsageError("--early-stopping works with one process on an input file, not with a dataset "
                             "folder or several processes")
        from alsx.distributed import fail_fast, leave_on_error

        with leave_on_error("training"), fail_fast("training"):
            code = cmd_train_dataset(a) if is_dataset(a.data) else _train_partitioned(a, topo)
        if topo.process_count > 1:  # the others wait here (no deadline) while process 0 writes,
            from jax.experimental import multihost_utils  # not at JAX's shutdown barrier (which has one)

            multihost_utils.sync_global_devices("alsx-train-written")
        return code
    data, summary = _load(a.data, a)
    check_split_input(data, a)
    split = make_split(data, a)
    if split is not None:
        print(f"split: {split.summary()}", file=sys.stderr)
    check_split(split, a)  # nothing to train on or to evaluate on: say so now, not after training
    train = data if split is None else split.train
    model = _model(a, progress=topo.process_index == 0)
    from alsx.cli_tune import make_early_stopping  # tune: --early-stopping (validation carved from `train`)

    stop = make_early_stopping(a, train, model)
    t = time.perf_counter()
    model.fit(train if stop is None else stop.train, split=split, eval_every=a.eval_every if split is not None else 0,
              eval_ks=tuple(a.ks), checkpointer=_checkpointer(a), step_timeout_s=topo.options.step_timeout_s,
              callback=stop)
    seconds = time.perf_counter() - t
    results = None
    if split is not None:  # on several devices each scores its own column shard
        with _saved_on_error(model, a.out):
            results = evaluate(model.row_embeddings_, model.col_embeddings_, split, model.hparams, tuple(a.ks),
                               a.alpha, topk=model.eval_topk_)
    split_model, refit_seconds = None, 0.0
    if (split is not None or stop is not None) and a.refit:  # the saved tables serve every row and entry
        print(f"refit: training again on all {data.nnz:,} input entries with the same settings, the model to save "
              "(--no-refit keeps the split-trained one)", file=sys.stderr)
        split_model, model = model, _model(a, progress=topo.process_index == 0)
        if stop is not None:  # tune: the refit trains for the best validation epoch count
            model.epochs = stop.best_epoch
        t = time.perf_counter()
        model.fit(data, step_timeout_s=topo.options.step_timeout_s)
        refit_seconds = time.perf_counter() - t
    _write_outputs(a, model, split, summary, results, seconds, data if split_model is not None else train,
                   seen=data, split_model=split_model, refit_seconds=refit_seconds)
    return 0


@contextlib.contextmanager
def _saved_on_error(model, out: str):
    """Saves the fitted ``model`` into ``out`` when the block raises, so an error after training
    (every check that can run before it does) never loses the trained tables."""
    try:
        yield
    except BaseException:
        model.save(out)
        print(f"alsx: note: the tables trained before the error below were saved to {out}", file=sys.stderr)
        raise


def _trained_on(a: argparse.Namespace, split, refit: bool, nnz: int) -> dict:
    """config.json's record of what the saved tables were trained on (read by ``alsx evaluate``)."""
    from alsx.folder import TRAINED_FILE

    if split is None:
        return {"part": "all input", "nnz": int(nnz), "refit": False, "split": None}
    params = {k: getattr(a, k) for k in SPLIT_KEYS}
    if refit:
        return {"part": "all input", "nnz": int(nnz), "refit": True, "evaluated_before_refit_on": params}
    return {"part": "the split's training part", "nnz": int(nnz), "refit": False, "split": params,
            "entries": TRAINED_FILE}


def _write_outputs(a: argparse.Namespace, model, split, summary, results, seconds: float, train,
                   tables: bool = True, seen=None, split_model=None, trained=None, refit_seconds: float = 0.0) -> None:
    """What ``alsx train`` leaves in OUT (process 0 of a multi-process run; ``tables=False``:
    the tables were written already, shard by shard).

    ``seen``: all input entries (Interactions), written as train.npz so ``recommend`` excludes
    everything a row had; ``split_model``: the split-trained model when ``model`` is its refit
    on all input (its history goes to split_history.json); ``trained``: the split's training
    entries of a model kept without refit (default ``model.train_``), written as trained.npz;
    ``seconds`` / ``refit_seconds``: the split-trained fit's and the refit's.
    """
    from alsx.folder import TRAINED_FILE

    out = Path(a.out)
    refit = split_model is not None
    fitted = model.train_ if trained is None else trained  # CSR the tables were trained on
    if seen is not None:
        model.train_ = seen.csr(a.alpha)
    model.save(out, tables=tables)
    stale = out / TRAINED_FILE
    if split is not None and not refit:
        np.savez(stale, indptr=fitted.indptr, indices=fitted.indices, values=fitted.values,
                 n_cols=np.int64(fitted.n_cols))
    elif stale.exists():  # left by an earlier run into the same folder
        stale.unlink()
    if refit:
        (out / "split_history.json").write_text(json.dumps(split_model.history_, indent=2))
    cfg = json.loads((out / "config.json").read_text())
    cfg["data"] = {"path": str(Path(a.data).resolve()), **{k: getattr(a, k) for k in DATA_KEYS}}
    cfg["split"] = {k: getattr(a, k) for k in SPLIT_KEYS}
    cfg["trained_on"] = _trained_on(a, split, refit, fitted.nnz)
    cfg["ingest"] = summary.to_dict()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if results is not None:
        note = ("the model trained on the split's training part, before the refit on all input that was saved"
                if refit else "the saved model (trained on the split's training part)")
        evaluated = {"split": {k: getattr(a, k) for k in SPLIT_KEYS}, "scored": note}
        (out / "metrics.json").write_text(json.dumps({**results, "evaluated": evaluated}, indent=2))
        print(format_table(results, a.ks))
    if a.profile:
        (out / "profile.json").write_text(json.dumps(_profile(model, train), indent=2))
    if tables and not refit:  # a refit model trained every row: nothing to fold in
        _fold_in_heldout(model, split)
        np.save(out / "row_embeddings.npy", model.row_embeddings_)
    history = [dict(h) for h in (split_model or model).history_]  # the evaluated fit, its final scores last
    if results is not None and history and "metrics" not in history[-1]:
        history[-1]["metrics"] = results["model"]
    if history:
        plot_history(history, out / "training.png", f"alsx train: d={model.hparams.dim}, {Path(a.data).name}")
    what = "on all input" if split is None else "on the split's training part"
    again = f", then refit on all input in {refit_seconds:.1f}s" if refit else ""
    print(f"trained {model.epochs} epochs {what} in {seconds:.1f}s{again}; wrote {out}")


def _train_partitioned(a: argparse.Namespace, topo) -> int:
    """``alsx train FILE`` over several processes: each parses only its part of FILE.

    Entries reach their owners by all-to-all (``alsx.data.partitioned``), each process splits
    and evaluates its own rows, and the ShardedEngine trains on the rows and columns each
    process's devices own.  No table is gathered: evaluation fetches only the rows it reads
    and ranks on the column shards, each process writes its own rows of the tables
    (``OUT`` must be one folder all processes see), and process 0 gathers only the training
    rows for ``train.npz`` and the folded-in held-out rows.
    """
    from alsx.core.sharded import ShardedEngine
    from alsx.core.sharding import make_mesh
    from alsx.data.partitioned import engine_inputs, gather_to_lead, load_partitioned, split_partitioned
    from alsx.distributed import route
    from alsx.eval.protocol import _compact_rows, evaluate_across_processes
    from alsx.model import sharded_eval_topk
    from alsx.serve.foldin import fold_in_sharded

    lead = topo.process_index == 0
    col = lambda v: int(v) if v is not None and str(v).isdigit() else v  # noqa: E731
    t = time.perf_counter()
    part = load_partitioned(a.data, fmt=a.fmt, row=col(a.row), col=col(a.col), value=col(a.value),
                            timestamp=col(a.timestamp), ids=a.ids, square=a.square, duplicates=a.duplicates)
    mine = part.local
    if lead:
        print(f"ingest: {part.summary} ({topo.process_count} processes, each parsed its part; "
              f"{time.perf_counter() - t:.1f}s)", file=sys.stderr)
    split = split_partitioned(part, a.split, **split_options(a))
    train = mine if split is None else split.train
    mesh = make_mesh()
    rows, cols, rc, cc = engine_inputs(train, a.alpha, mesh, a.tied)
    model = _model(a, progress=lead)
    engine: dict = {}

    def factory(_rows, _cols, hp, packing, tied):
        engine["e"] = ShardedEngine(rows, cols, hp, packing, tied=tied, mesh=mesh, row_counts=rc, col_counts=cc)
        return engine["e"]

    def queries(st):
        e = engine["e"]
        if split.foldin is not None:  # held-out rows: folded in against the sharded column table
            return lambda rows, history: fold_in_sharded(e, st, history, model.hparams)
        return lambda rows, history: e.host_rows(st, "w", rows)

    def scores(st) -> dict:  # a collective: no table is gathered, each device ranks its column shard
        return evaluate_across_processes(None, None, split, model.hparams, tuple(a.ks), alpha=a.alpha, col_counts=cc,
                                         topk=sharded_eval_topk(engine["e"], st), queries=queries(st))

    def callback(record: dict, st) -> None:
        if split is not None and a.eval_every and st.epoch % a.eval_every == 0 and st.epoch != model.epochs:
            record["metrics"] = scores(st)["model"]

    model.engine_factory = factory
    t = time.perf_counter()
    model.fit(train, callback=callback, checkpointer=_checkpointer(a), step_timeout_s=topo.options.step_timeout_s,
              gather_tables=False)
    seconds = time.perf_counter() - t
    st, e = model.state_, engine["e"]
    results = scores(st) if split is not None else None
    if results is not None:
        model.history_[-1]["metrics"] = results["model"]
    split_model, refit_seconds = None, 0.0
    if split is not None and a.refit:  # as one process: the saved tables train on all input entries
        if lead:
            print(f"refit: training again on all input entries with the same settings, the model to save "
                  "(--no-refit keeps the split-trained one)", file=sys.stderr)
        all_rows, all_cols, all_rc, all_cc = engine_inputs(mine, a.alpha, mesh, a.tied)

        def refit_factory(_rows, _cols, hp, packing, tied):
            engine["e"] = ShardedEngine(all_rows, all_cols, hp, packing, tied=tied, mesh=mesh, row_counts=all_rc,
                                        col_counts=all_cc)
            return engine["e"]

        split_model, model = model, _model(a, progress=lead)
        model.engine_factory = refit_factory
        t = time.perf_counter()
        model.fit(mine, step_timeout_s=topo.options.step_timeout_s, gather_tables=False)
        refit_seconds = time.perf_counter() - t
        st, e = model.state_, engine["e"]
    e.write_tables(st, a.out)  # every process writes its own rows
    folded = None
    if split_model is None and split is not None and split.foldin is not None:  # each folds in its held-out rows
        held = np.unique(split.foldin.rows).astype(np.int32)
        emb = fold_in_sharded(e, st, _compact_rows(split.foldin, held, a.alpha), model.hparams)
        got = route(np.concatenate([held[:, None], emb.view(np.int32)], axis=1), np.zeros(len(held), np.int64))
        folded = got[:, 0], np.ascontiguousarray(got[:, 1:]).view(np.float32)  # process 0 writes them
    everything = gather_to_lead(mine)  # train.npz: `alsx recommend` excludes all a row had in the input
    kept = gather_to_lead(train) if split is not None and split_model is None else everything  # trained.npz
    if not lead:
        return 0
    if folded is not None:
        mm = np.lib.format.open_memmap(Path(a.out) / "row_embeddings.npy", mode="r+")
        mm[folded[0]] = folded[1]
        mm.flush()
        del mm
    if a.profile:
        print("note: --profile times one device and is skipped in a multi-process run", file=sys.stderr)
        a.profile = False
    _write_outputs(a, model, split, part.summary, results, seconds, everything, tables=False, seen=everything,
                   split_model=split_model, trained=kept.csr(a.alpha), refit_seconds=refit_seconds)
    return 0


def _evaluation_data(a: argparse.Namespace, model):
    """(data, split flags) for ``alsx evaluate``: the saved data options and split, flags given now winning."""
    from alsx.errors import DataError, ModelError, UsageError

    cfg = model.config_
    where = Path(a.model) / "config.json"
    saved = cfg.get("data") or {}
    if not isinstance(saved, dict) or not isinstance(cfg.get("split") or {}, dict):
        raise ModelError(f"{where}: 'data' and 'split' must be JSON objects")
    args = argparse.Namespace(**{**{k: None for k in DATA_KEYS + SPLIT_KEYS}, "ids": "auto", "duplicates": "sum",
                                 "square": False, **saved, **(cfg.get("split") or {})})
    for k in DATA_KEYS + SPLIT_KEYS:  # flags given now override the saved ones
        if getattr(a, k, None) is not None:
            setattr(args, k, getattr(a, k))
    path = a.data or saved.get("path")
    if path is None:
        raise UsageError(f"{where} names no data file (the model was not trained by 'alsx train FILE'); "
                         "pass it: alsx evaluate MODEL DATA")
    if not Path(path).exists():
        raise DataError(f"{path}: no such file" + ("" if a.data else f" (the data path in {where}); pass the "
                                                   "data file: alsx evaluate MODEL DATA"))
    if args.split in (None, "none"):
        raise UsageError(f"{a.model} was trained without a split (--split none): pass --split to evaluate it")
    data, _ = _load(path, args)
    if tuple(data.shape) != tuple(model.shape_):
        raise UsageError(f"{path}: {data.shape[0]} rows x {data.shape[1]} columns, but the model in {a.model} was "
                         f"trained on {model.shape_[0]} x {model.shape_[1]}: not the data it was trained on")
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
        print(f"WARNING: {overlap['n_trained_on']:,} of {overlap['n_test']:,} test entries were trained on: "
              "inflated", file=sys.stderr)
        results = {**results, "overlap": overlap}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from alsx.data.split import heldout_rows_split
    from alsx.data.synthetic import community_graph
    from alsx.eval.protocol import evaluate

    t0 = time.perf_counter()
    data = community_graph(n_nodes=a.nodes, n_edges=a.edges, seed=a.seed)
    split = heldout_rows_split(data, row_fraction=0.1, history_fraction=0.8, seed=a.seed)
    print(f"synthetic community graph: {data.shape[0]:,} nodes, {data.nnz:,} links; "
          f"{len(split.heldout_rows):,} rows held out (80% of each folded in, 20% to find)")
    model = _model(a)
    model.fit(split.train, split=split, eval_every=1, eval_ks=(20, 50))
    results = evaluate(model.row_embeddings_, model.col_embeddings_, split, model.hparams, (20, 50))
    out = Path(a.out) if a.out else Path.cwd() / f"alsx-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    model.save(out)
    _fold_in_heldout(model, split)
    np.save(out / "row_embeddings.npy", model.row_embeddings_)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    png = plot_history(model.history_, out / "training.png",
                       f"alsx demo: d={a.dim}, {data.nnz:,} links, held-out rows")
    print()
    print(format_table(results, (20, 50)))
    h = model.history_
    print(f"\nloss {h[0]['loss']['total']:.1f} -> {h[-1]['loss']['total']:.1f}; "
          f"{np.mean([r['seconds'] for r in h[1:]] or [h[0]['seconds']]):.2f} s/epoch after compile; "
          f"total {time.perf_counter() - t0:.1f}s")
    print(f"embeddings, config, history and {png.name} written to: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alsx", description="implicit ALS embeddings in JAX")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train and evaluate on a built-in synthetic link graph")
    _add_model_args(d, dim=64, epochs=10)
    d.add_argument("--nodes", type=int, default=40_000, help="nodes of the graph (default %(default)s)")
    d.add_argument("--edges", type=int, default=400_000, help="links of the graph (default %(default)s)")
    d.add_argument("--out", default=None, help="output folder (default: ./alsx-demo-TIMESTAMP)")
    _add_cpu_devices(d, default=1)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="fit a model on a data file")
    t.add_argument("data", help="npz, csv/tsv, parquet or edge list (optionally .gz), or a dataset folder written "
                                "by alsx webgraph build/synth (trained out of core, evaluated on its held-out rows)")
    t.add_argument("--out", required=True, help="output folder")
    _add_model_args(t)
    _add_data_args(t)
    _add_split_args(t)
    t.add_argument("--eval-every", type=int, default=0, help="evaluate every N epochs (0: only at the end; default %(default)s)")
    from alsx.cli_tune import add_parser as add_tune_parser, add_train_options  # tune: --config, --early-stopping

    add_train_options(t)
    t.add_argument("--no-refit", dest="refit", action="store_false",
                   help="with a split: save the model trained on the split's training part (default: after "
                        "evaluating it, train again on all input with the same settings and save that, so the "
                        "tables serve every row and entry)")
    t.add_argument("--loss-every", type=int, default=1,
                   help="training loss every N epochs and after the last (0: never; non-finite tables still stop; "
                        "default %(default)s)")
    t.add_argument("--profile", action="store_true",
                   help="after training, time each phase of both half-steps (gather, normal equations, solve, "
                        "scatter, Gramian) on one device; writes OUT/profile.json")
    g = t.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="save a checkpoint (Orbax, sharded, atomic) every K epochs into OUT/checkpoints (with "
                        "--resume: into the folder resumed from); rerunning the same command continues from there "
                        "(default %(default)s: none unless --checkpoint-minutes or --resume asks for them)")
    g.add_argument("--checkpoint-minutes", type=float, default=None, metavar="M", help="also every M minutes")
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the newest good checkpoint in DIR (an earlier --out or its checkpoints/); "
                        "any device or process count; an error if DIR holds none. Unreadable newer steps are "
                        "moved aside to DIR/<epoch>.corrupt")
    from alsx.distributed import add_distributed_arguments

    add_distributed_arguments(t)
    _add_cpu_devices(t, default=0)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on its split")
    e.add_argument("model", help="folder written by 'alsx train'")
    e.add_argument("data", nargs="?", default=None, help="data file (default: the one it was trained on)")
    e.add_argument("--split", choices=["random", "heldout-rows", "last", "given"], default=None,
                   help="the split to score (default: the one the model was trained with)")
    e.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: the training run's)")
    e.add_argument("--k", dest="ks", type=int, nargs="+", default=[20, 50],
                   help="cut-offs of the metrics (default %(default)s)")
    e.add_argument("--json", default=None, help="also write the metrics to this file")
    e.add_argument("--allow-overlap", action="store_true",
                   help="score a split whose test entries the model was trained on (refused otherwise: a model "
                        "refit on all input overlaps every split of it); the metrics are inflated")
    e.set_defaults(func=cmd_evaluate)

    from alsx.cli_serve import add_parser as add_serve_commands  # servecli: recommend, similar, export

    add_serve_commands(sub)
    add_tune_parser(sub)  # tune: `alsx tune` (cli/tune.py after the CLI split)

    try:
        from alsx.webgraph.cli import add_webgraph_commands
    except ImportError:  # pragma: no cover - the webgraph module is optional at import time
        add_webgraph_commands = None
    if add_webgraph_commands is not None:
        add_webgraph_commands(sub)
    return p


def enable_compile_cache() -> None:
    """Keeps XLA programs across runs (a half-step compiles in seconds; reruns then start at once)."""
    from alsx.compile_cache import enable_compile_cache as enable

    enable()


def _configure(args: argparse.Namespace) -> None:
    if hasattr(args, "cpu_devices"):
        import os

        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:  # an explicit XLA_FLAGS wins
            n = args.cpu_devices or min(os.cpu_count() or 1, 8)
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    enable_compile_cache()


def main(argv: list[str] | None = None) -> int:
    """``alsx``: returns the exit code; a failure is one line ``alsx: error: <message>`` on stderr
    with the code of ``alsx.errors`` (``--debug`` or ALSX_DEBUG=1 adds the traceback)."""
    import os

    from alsx.cli_guard import add_debug_flag, check_args, describe, leave

    parser = build_parser()
    add_debug_flag(parser)
    args = parser.parse_args(argv)  # a usage error exits 2 here (argparse)
    debug = getattr(args, "debug", False) or os.environ.get("ALSX_DEBUG", "") not in ("", "0")
    try:
        from alsx.cli_tune import apply_config  # tune: --config FILE, command-line flags win

        args = apply_config(parser, args, argv)
        if args.command != "webgraph":
            check_args(args)  # before any data is read or JAX is imported
        _configure(args)
        return int(args.func(args) or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            raise
        exc: BaseException = e  # raise SystemExit("error: ...") from older code paths: a usage error
        code, message = 2, str(e.code).removeprefix("error: ")
    except BaseException as e:  # noqa: BLE001 - the top of the program: everything becomes one line
        exc = e
        code, message = describe(e, args.command)
    if debug:
        import traceback

        traceback.print_exception(exc)
    print(f"alsx: error: {message}", file=sys.stderr, flush=True)
    if argv is None:  # the `alsx` program itself (not a caller's main([...])): see leave()
        leave(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
