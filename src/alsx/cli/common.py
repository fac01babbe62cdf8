"""Argument helpers shared by the ``alsx`` commands: model, data, split and checkpoint flags, and
the small pieces every command uses (loading data, the split, the model, the metrics table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alsx.config import AUTO, BACKENDS, DEFAULTS

SPLIT_KEYS = ("split", "test_fraction", "heldout_fraction", "history_fraction", "split_seed")
DATA_KEYS = ("fmt", "row", "col", "value", "timestamp", "ids", "square", "duplicates")


# The model flags after --dim/--epochs, in help order: (flag, add_argument keywords); a flag
# without a "default" (and no action) takes DEFAULTS[its name], so defaults live only in config.
_MODEL_FLAGS: tuple[tuple[str, dict], ...] = (
    (
        "--reg",
        {
            "type": lambda v: auto_or_float(v, "--reg"),
            "help": "lambda, a number or 'auto': --reg-ratio x alpha0 (default %(default)s)",
        },
    ),
    (
        "--unobserved-weight",
        {
            "type": lambda v: auto_or_float(v, "--unobserved-weight"),
            "help": "alpha0, weight of all pairs pushed to 0, a number or 'auto': "
            "--unobserved-ratio x the training matrix's density nnz / (rows x cols) (default %(default)s)",
        },
    ),
    (
        "--unobserved-ratio",
        {
            "type": float,
            "help": "with --unobserved-weight auto: total weight of the unobserved pairs over that of the observed "
            "entries (default %(default)s)",
        },
    ),
    ("--reg-ratio", {"type": float, "help": "with --reg auto: reg = this x alpha0 (default %(default)s)"}),
    (
        "--nu",
        {"type": float, "help": "frequency scaling of the regulariser: 0 plain, 1 Rendle et al. (default %(default)s)"},
    ),
    (
        "--solver",
        {
            "choices": ["cg", "cholesky", "block"],
            "help": "cg: matrix-free conjugate gradient; cholesky: exact; block: iALS++ subspace sweeps "
            "(for large --dim; default %(default)s)",
        },
    ),
    (
        "--cg-steps",
        {
            "type": int,
            "help": "with --solver cg: conjugate-gradient steps per row solve, warm-started (default %(default)s)",
        },
    ),
    (
        "--block-size",
        {
            "type": int,
            "help": "subspace size of --solver block (divides --dim); 0: 1 on the cpu backend, the largest "
            "divisor of --dim up to 64 with jax (default %(default)s)",
        },
    ),
    ("--dtype", {"choices": ["float32", "bfloat16"], "help": "table storage (default %(default)s)"}),
    (
        "--alpha",
        {
            "type": float,
            "default": None,
            "help": "confidence c = 1 + alpha * value from the value column (default: binary)",
        },
    ),
    ("--tied", {"action": "store_true", "help": "one table for rows and columns (square graphs)"}),
    ("--seed", {"type": int, "help": "seed of the initial tables (default %(default)s)"}),
    (
        "--init",
        {
            "choices": ["normal", "uniform"],
            "help": "start tables N(0, s^2) or U[0, 2s), s = init-scale / sqrt(dim) (default %(default)s)",
        },
    ),
    ("--init-scale", {"type": float, "help": "(default %(default)s)"}),
    (
        "--backend",
        {
            "choices": BACKENDS,
            "help": "cpu: fused Numba CG kernels on all cores; jax: XLA on every device (sharded when "
            "there are several); auto: cpu on a CPU-only single-process CG float32 run, "
            "else jax (default %(default)s)",
        },
    ),
)


def auto_or_float(v: str, flag: str) -> float | str:
    """A flag's value: 'auto' or a number (argparse reports the ValueError as an invalid value)."""
    if v == AUTO:
        return v
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes a number or '{AUTO}', got {v!r}") from None


def resolve_auto_weights(a: argparse.Namespace, nnz: int, shape: tuple[int, int]) -> None:
    """Replaces an 'auto' --reg / --unobserved-weight in ``a`` by its number for a training matrix of ``nnz`` entries
    and ``shape`` (for paths that hold the whole matrix's counts but do not fit ALS on it)."""
    from alsx.config import resolve_weights

    a.reg, a.unobserved_weight = resolve_weights(
        a.reg, a.unobserved_weight, nnz, shape, a.unobserved_ratio, a.reg_ratio
    )


def add_model_args(p: argparse.ArgumentParser, dim: int = DEFAULTS["dim"], epochs: int = DEFAULTS["epochs"]) -> None:
    """The model flags (defaults from ``alsx.config.DEFAULTS``)."""
    g = p.add_argument_group("model")
    g.add_argument("--dim", type=int, default=dim, help="embedding dimension (default %(default)s)")
    g.add_argument("--epochs", type=int, default=epochs, help="full epochs (default %(default)s)")
    for flag, kw in _MODEL_FLAGS:
        if "default" not in kw and "action" not in kw:
            kw = {**kw, "default": DEFAULTS[flag[2:].replace("-", "_")]}
        g.add_argument(flag, **kw)


def add_cpu_devices(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=default,
        metavar="N",
        help="with --backend jax: split the CPU into N JAX devices, the tables sharded over them "
        "(XLA runs one device per core, so this is how a JAX CPU run uses every core); "
        "0 = one per core (default %(default)s; ignored on GPUs)",
    )


# The input flags, in help order: (flag, add_argument keywords).
_DATA_FLAGS: tuple[tuple[str, dict], ...] = (
    ("--format", {"dest": "fmt", "default": None, "help": "npz, csv, tsv, parquet, edgelist (default: by suffix)"}),
    ("--row", {"default": None, "help": "row column: header name or 0-based number"}),
    ("--col", {"default": None, "help": "column column: header name or 0-based number"}),
    ("--value", {"default": None, "help": "value column (with --alpha gives confidences)"}),
    ("--timestamp", {"default": None, "help": "timestamp column (for --split last)"}),
    (
        "--ids",
        {
            "choices": ["auto", "index", "map"],
            "default": "auto",
            "help": "'index': non-negative integer indices kept as given; 'map': arbitrary ids; auto: 'index' "
            "for integer ids, else 'map' (default %(default)s)",
        },
    ),
    ("--square", {"action": "store_true", "help": "rows and columns share one vocabulary (graphs)"}),
    (
        "--duplicates",
        {
            "choices": ["sum", "error", "first"],
            "default": "sum",
            "help": "repeated (row, column) entries: add their values, stop with an error, or keep the first "
            "(default %(default)s)",
        },
    ),
)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    for flag, kw in _DATA_FLAGS:
        g.add_argument(flag, **kw)


def add_split_args(p: argparse.ArgumentParser, default: str = "random") -> None:
    g = p.add_argument_group("split")
    g.add_argument(
        "--split",
        choices=["none", "random", "heldout-rows", "last", "given"],
        default=default,
        help="random: per-row holdout; heldout-rows: rows never trained, folded in at evaluation; "
        "last: latest entries by timestamp; given: the input's is_test mask (default %(default)s)",
    )
    g.add_argument(
        "--test-fraction", type=float, default=0.2, help="random: share of each row held out (default %(default)s)"
    )
    g.add_argument(
        "--heldout-fraction", type=float, default=0.1, help="heldout-rows: share of rows held out (default %(default)s)"
    )
    g.add_argument(
        "--history-fraction", type=float, default=0.8, help="heldout-rows: share folded in (default %(default)s)"
    )
    g.add_argument("--split-seed", type=int, default=0, help="seed of the split (default %(default)s)")
    g.add_argument(
        "--k", dest="ks", type=int, nargs="+", default=[20, 50], help="cut-offs of the metrics (default %(default)s)"
    )


def ingest_options(a: argparse.Namespace) -> dict:
    """The reader keywords of the data flags (a column given as digits is its index)."""
    col = lambda v: int(v) if v is not None and str(v).isdigit() else v  # noqa: E731
    return {
        "fmt": a.fmt,
        "row": col(a.row),
        "col": col(a.col),
        "value": col(a.value),
        "timestamp": col(a.timestamp),
        "ids": a.ids,
        "square": a.square,
        "duplicates": a.duplicates,
    }


def load_data(path: str, a: argparse.Namespace):
    from alsx.data.ingest import load_interactions

    data, summary = load_interactions(path, **ingest_options(a))
    print(f"ingest: {summary}", file=sys.stderr)
    return data, summary


def split_options(a: argparse.Namespace) -> dict:
    """Keyword arguments of ``alsx.data.split.by_name`` from the --split flags."""
    return {
        "fraction": a.test_fraction,
        "row_fraction": a.heldout_fraction,
        "history_fraction": a.history_fraction,
        "seed": a.split_seed,
    }


def make_split(data, a: argparse.Namespace):
    from alsx.data.split import by_name

    return by_name(a.split, data, **split_options(a))


def model_from_args(a: argparse.Namespace, progress: bool = True):
    """The ``ALS`` estimator the model flags describe (hyper-parameters: ``HParams.from_args``)."""
    import dataclasses

    from alsx.config import HParams
    from alsx.model import ALS

    return ALS(  # reg / unobserved_weight may be 'auto' (resolved by fit from the training matrix)
        **{f.name: getattr(a, f.name) for f in dataclasses.fields(HParams)},
        epochs=a.epochs,
        alpha=a.alpha,
        tied=a.tied,
        seed=a.seed,
        progress=progress,
        loss_every=getattr(a, "loss_every", DEFAULTS["loss_every"]),
        backend=a.backend,
        unobserved_ratio=a.unobserved_ratio,
        reg_ratio=a.reg_ratio,
    )


def format_table(results: dict[str, dict[str, float]], ks) -> str:
    names = [f"{m}@{k}" for k in ks for m in ("recall", "recall_gt", "ndcg")]
    lines = [f"{'model':<12}" + "".join(f"{n:>13}" for n in names)]
    for model, metrics in results.items():
        lines.append(f"{model:<12}" + "".join(f"{metrics.get(n, float('nan')):>13.4f}" for n in names))
    return "\n".join(lines)


def fold_in_heldout(model, split) -> None:
    """Gives held-out rows their folded-in embeddings, so every row of the saved table is usable."""
    from alsx.eval.protocol import compact_rows
    from alsx.serve.foldin import fold_in

    if split is None or split.heldout_rows is None or split.foldin is None:
        return
    rows = split.heldout_rows
    hist = compact_rows(split.foldin, rows, model.alpha)
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
    metric = min(
        (m for h in scored for m in h["metrics"] if m.startswith("recall@")),
        key=lambda m: (m != "recall@20", int(m.split("@")[1])),
        default="recall@20",
    )  # --k may lack 20
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


def checkpointer_from_args(a: argparse.Namespace):
    """The Checkpointer asked for by --checkpoint-every/--checkpoint-minutes/--resume, or None.

    ``--resume DIR`` must find a finished checkpoint (UsageError otherwise: a typo'd folder
    must not retrain from epoch 1); "resume if there is one" is a rerun of the same command
    with --checkpoint-every, which continues from OUT/checkpoints by itself.  A resumed run
    saves its further checkpoints in the folder it resumed from.
    """
    if not (a.checkpoint_every or a.checkpoint_minutes or a.resume):
        return None
    from alsx.checkpoint import Checkpointer, CheckpointOptions, describe_folder
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
            raise UsageError(
                f"--resume {a.resume}: {what}; give the --out folder of a run with --checkpoint-every "
                "(or its checkpoints/)"
            )
    else:
        directory = Path(a.out) / "checkpoints"
    ck = Checkpointer(
        CheckpointOptions(
            str(directory.resolve()), every_epochs=a.checkpoint_every or 0, every_minutes=a.checkpoint_minutes
        )
    )
    if a.resume and not ck.epochs():
        ck.close()
        raise UsageError(
            f"--resume {a.resume}: no finished checkpoint in {directory} ({describe_folder(directory)}); "
            "drop --resume to train from epoch 1"
        )
    return ck
