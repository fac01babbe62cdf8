"""``alsx train``: fit on a data file or a dataset folder, evaluate, refit on all input, save.

One process and a file: ``ALS.fit`` (the one training path, ``alsx.train.run``); a dataset
folder: ``alsx.webgraph.train.train_webgraph`` (the same path); several processes:
``alsx.cli.train_multi.train_partitioned``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from alsx.cli.common import (
    add_cpu_devices,
    add_data_args,
    add_model_args,
    add_split_args,
    checkpointer_from_args,
    format_table,
    load_data,
    make_split,
    model_from_args,
    resolve_auto_weights,
)
from alsx.cli.outputs import write_outputs
from alsx.cli.train_multi import train_partitioned
from alsx.cli.train_options import add_train_options, check_early_stopping, make_early_stopping
from alsx.config import DEFAULTS
from alsx.distributed import add_distributed_arguments


def add_parser(sub) -> None:
    """``alsx train DATA --out DIR``: fit, evaluate, refit on all input, save."""
    t = sub.add_parser("train", help="fit a model on a data file")
    t.add_argument(
        "data",
        help="npz, csv/tsv, parquet or edge list (optionally .gz), or a dataset folder written "
        "by alsx webgraph build/synth (trained out of core, evaluated on its held-out rows)",
    )
    t.add_argument("--out", required=True, help="output folder")
    add_model_args(t)
    add_data_args(t)
    add_split_args(t)
    t.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every N epochs (0: only at the end; default %(default)s)"
    )
    add_train_options(t)  # alsx.cli.tune: --config FILE, --early-stopping PATIENCE
    t.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="with a split: save the model trained on the split's training part (default: after "
        "evaluating it, train again on all input with the same settings and save that, so the "
        "tables serve every row and entry)",
    )
    t.add_argument(
        "--loss-every",
        type=int,
        default=DEFAULTS["loss_every"],
        help="training loss every N epochs and after the last (0: never; non-finite tables still stop; "
        "default %(default)s)",
    )
    t.add_argument(
        "--profile",
        action="store_true",
        help="after training, time each phase of both half-steps (gather, normal equations, solve, "
        "scatter, Gramian) on one device; writes OUT/profile.json",
    )
    g = t.add_argument_group("dataset folders (alsx webgraph build/synth)")
    g.add_argument(
        "--chunk-entries",
        type=float,
        default=None,
        metavar="N",
        help="stored entries per streamed row range (default 2^24 = 16777216; fewer: less host memory, "
        "more ranges per epoch); e.g. 4e6",
    )
    g.add_argument(
        "--max-eval-rows",
        type=float,
        default=None,
        metavar="N",
        help="evaluate at most N held-out rows, a seeded sample (default: all)",
    )
    g = t.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="K",
        help="save a checkpoint (Orbax, sharded, atomic) every K epochs into OUT/checkpoints (with "
        "--resume: into the folder resumed from); rerunning the same command continues from there "
        "(default %(default)s: none unless --checkpoint-minutes or --resume asks for them)",
    )
    g.add_argument("--checkpoint-minutes", type=float, default=None, metavar="M", help="also every M minutes")
    g.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue from the newest good checkpoint in DIR (an earlier --out or its checkpoints/); "
        "any device or process count; an error if DIR holds none. Unreadable newer steps are "
        "moved aside to DIR/<epoch>.corrupt",
    )
    add_distributed_arguments(t)
    add_cpu_devices(t, default=0)
    t.set_defaults(func=cmd_train)


def cmd_train(a: argparse.Namespace) -> int:
    from alsx.distributed import initialize, options_from_args
    from alsx.errors import UsageError
    from alsx.webgraph.dataset import is_dataset

    check_early_stopping(a)
    try:
        options = options_from_args(a)
    except ValueError as e:  # the multi-process flags (their messages name the flag)
        raise UsageError(str(e)) from None
    # One process, one input file: the data is read and checked before JAX is imported (initialize),
    # so a malformed file fails at once.
    checked = load_checked(a) if not (options.multi_process or is_dataset(a.data)) else None
    try:
        topo = initialize(options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if is_dataset(a.data) or topo.process_count > 1:
        # A WebGraph dataset directory (streamed from disk), or one input file of which each
        # process parses only its part.
        if a.early_stopping:  # early stopping runs in the one-process, in-memory path only
            raise UsageError(
                "--early-stopping works with one process on an input file, not with a dataset "
                "folder or several processes"
            )
        from alsx.distributed import fail_fast, leave_on_error

        with leave_on_error("training"), fail_fast("training"):
            code = train_dataset(a) if is_dataset(a.data) else train_partitioned(a, topo)
        if topo.process_count > 1:  # the others wait here (no deadline) while process 0 writes,
            from jax.experimental import multihost_utils  # not at JAX's shutdown barrier (which has one)

            multihost_utils.sync_global_devices("alsx-train-written")
        return code
    from alsx.eval.protocol import evaluate

    data, summary, split = checked if checked is not None else load_checked(a)
    train = data if split is None else split.train
    model = model_from_args(a, progress=topo.process_index == 0)
    stop = make_early_stopping(a, train, model)  # --early-stopping: validation carved from `train`
    t = time.perf_counter()
    model.fit(
        train if stop is None else stop.train,
        split=split,
        eval_every=a.eval_every if split is not None else 0,
        eval_ks=tuple(a.ks),
        checkpointer=checkpointer_from_args(a),
        step_timeout_s=topo.options.step_timeout_s,
        callback=stop,
    )
    seconds = time.perf_counter() - t
    results = None
    if split is not None:  # on several devices each scores its own column shard
        with _saved_on_error(model, a.out):
            results = evaluate(
                model.row_embeddings_,
                model.col_embeddings_,
                split,
                model.hparams,
                tuple(a.ks),
                a.alpha,
                topk=model.eval_topk_,
            )
    split_model, refit_seconds = None, 0.0
    if (split is not None or stop is not None) and a.refit:  # the saved tables serve every row and entry
        print(
            f"refit: training again on all {data.nnz:,} input entries with the same settings, the model to save "
            "(--no-refit keeps the split-trained one)",
            file=sys.stderr,
        )
        split_model, model = model, model_from_args(a, progress=topo.process_index == 0)
        # the same numbers as the model evaluated ('auto' weights stay those of the training part)
        model.set_params(reg=split_model.hparams_.reg, unobserved_weight=split_model.hparams_.unobserved_weight)
        if stop is not None:  # the refit trains for the best validation epoch count
            model.epochs = stop.best_epoch
        t = time.perf_counter()
        model.fit(data, step_timeout_s=topo.options.step_timeout_s)
        refit_seconds = time.perf_counter() - t
    write_outputs(
        a,
        model,
        split,
        summary,
        results,
        seconds,
        data if split_model is not None else train,
        seen=data,
        split_model=split_model,
        refit_seconds=refit_seconds,
    )
    return 0


def load_checked(a: argparse.Namespace):
    """(data, ingest summary, split or None) of ``alsx train FILE``, checked: nothing to train on or to
    evaluate on is an error now, not after training."""
    from alsx.cli.guard import check_split, check_split_input

    data, summary = load_data(a.data, a)
    check_split_input(data, a)
    split = make_split(data, a)
    if split is not None:
        print(f"split: {split.summary()}", file=sys.stderr)
    check_split(split, a)
    return data, summary, split


def train_dataset(a: argparse.Namespace) -> int:
    """``alsx train DATASET_DIR``: the one training path on a WebGraph dataset folder, with the model
    flags as given (``HParams.from_args``: --init, --init-scale, --block-size, ... and --backend)."""
    from alsx.config import HParams
    from alsx.webgraph.dataset import open_dataset
    from alsx.webgraph.train import train_webgraph

    train = open_dataset(a.data).train_csr()  # memory-mapped: 'auto' weights need only its nnz and shape
    resolve_auto_weights(a, train.nnz, (train.n_rows, train.n_cols))
    hp = HParams.from_args(a)
    t = time.perf_counter()
    res = train_webgraph(
        a.data,
        a.out,
        hp,
        epochs=a.epochs,
        tied=a.tied,
        alpha=a.alpha,
        seed=a.seed,
        ks=tuple(a.ks),
        eval_every=a.eval_every,
        backend=a.backend,
        chunk_entries=int(a.chunk_entries) if a.chunk_entries else None,
        max_eval_rows=int(a.max_eval_rows) if a.max_eval_rows else None,
        checkpointer=checkpointer_from_args(a),
        loss_every=a.loss_every,
    )
    if res["metrics"] is not None:
        print(format_table(res["metrics"], a.ks))
    print(f"trained {res['epochs']} epochs in {time.perf_counter() - t:.1f}s ({res['engine']}); wrote {a.out}")
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
