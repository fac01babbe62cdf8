"""What ``alsx`` checks before any work, and how it reports a failure: one line, one exit code.

``check_args`` runs on the parsed flags before data is read (and before JAX is imported), so
a wrong flag costs a second, not a training run; ``check_split_input`` and ``check_split`` run
on the data and its split before training.  They raise :class:`alsx.errors.UsageError` or
:class:`~alsx.errors.DataError` naming the flag and the value.  ``describe`` maps any exception to ``(exit code, one-line message)`` with the
codes of :mod:`alsx.errors`; ``leave`` ends the ``alsx`` process after an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from alsx.config import AUTO
from alsx.errors import AlsxError, DataError, ModelError, TrainingError, UsageError

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
FORMATS = ("npz", "csv", "tsv", "edgelist", "parquet")  # alsx.data.ingest's readers

# flag -> (attribute, lowest allowed value)
_INT_FLAGS = {
    "--dim": ("dim", 1),
    "--epochs": ("epochs", 1),
    "--cg-steps": ("cg_steps", 1),
    "--block-size": ("block_size", 0),
    "--eval-every": ("eval_every", 0),
    "--loss-every": ("loss_every", 0),
    "--checkpoint-every": ("checkpoint_every", 0),
    "--cpu-devices": ("cpu_devices", 0),
    "--split-seed": ("split_seed", 0),
    "--nodes": ("nodes", 1),
    "--edges": ("edges", 1),
    "-k": ("k", 1),
}
_NON_NEGATIVE = {"--reg": "reg", "--unobserved-weight": "unobserved_weight", "--nu": "nu", "--alpha": "alpha"}
_POSITIVE = {
    "--init-scale": "init_scale",
    "--checkpoint-minutes": "checkpoint_minutes",
    "--step-timeout": "step_timeout",
    "--unobserved-ratio": "unobserved_ratio",
    "--reg-ratio": "reg_ratio",
}
_AUTO_OK = ("--reg", "--unobserved-weight")  # 'auto': derived from the training matrix (config.resolve_weights)
_OS_REASONS = (
    (FileNotFoundError, "no such file or folder"),
    (IsADirectoryError, "is a folder"),
    (NotADirectoryError, "not a folder"),
    (PermissionError, "permission denied"),
)
_FRACTIONS = {
    "--test-fraction": "test_fraction",
    "--heldout-fraction": "heldout_fraction",
    "--history-fraction": "history_fraction",
}


def check_args(a: argparse.Namespace) -> None:
    """Every flag value of ``alsx train|demo|evaluate|recommend`` that cannot work, as a UsageError.

    Only attributes the subcommand has are checked.  ``--out`` is created (with its parents)
    and probed with a temporary file, so an unwritable folder fails now, not after training.
    """
    for flag, (attr, low) in _INT_FLAGS.items():
        v = getattr(a, attr, None)
        if v is not None and v < low:
            raise UsageError(f"{flag} must be >= {low}, got {v}")
    for flag, attr in _NON_NEGATIVE.items():
        v = getattr(a, attr, None)
        if isinstance(v, str):  # a --config file's value skips argparse's type
            if v == AUTO and flag in _AUTO_OK:
                continue
            raise UsageError(f"{flag} takes a number{' or ' + repr(AUTO) if flag in _AUTO_OK else ''}, got {v!r}")
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise UsageError(f"{flag} must be a finite number >= 0, got {v}")
    for flag, attr in _POSITIVE.items():
        v = getattr(a, attr, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UsageError(f"{flag} must be a finite number > 0, got {v}")
    for flag, attr in _FRACTIONS.items():  # checked whatever --split is: a typo should not wait for a rerun
        v = getattr(a, attr, None)
        if v is not None and not 0.0 < v < 1.0:
            raise UsageError(f"{flag} must be strictly between 0 and 1, got {v}")
    for k in getattr(a, "ks", None) or ():
        if k < 1:
            raise UsageError(f"--k must be >= 1, got {k}")
    block, dim = getattr(a, "block_size", 0), getattr(a, "dim", None)
    if block and dim and getattr(a, "solver", None) == "block" and dim % block:
        raise UsageError(f"--block-size {block} must divide --dim {dim}")
    if getattr(a, "value", None) is not None and getattr(a, "alpha", None) is None:
        raise UsageError(
            f"--value {a.value} is used only with --alpha: add --alpha A to weigh each entry by "
            "1 + A * value, or drop --value to train on the entries alone"
        )
    fmt = getattr(a, "fmt", None)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    data = getattr(a, "data", None)
    if data is not None and not Path(data).exists():
        raise DataError(f"{data}: no such file or folder")
    resume = getattr(a, "resume", None)
    if resume is not None and not Path(resume).is_dir():
        raise UsageError(f"--resume {resume}: no such folder")
    model = getattr(a, "model", None)
    if model is not None and not Path(model).is_dir():
        raise ModelError(f"{model}: no such model folder (give a folder written by 'alsx train --out')")
    if model is not None:  # its config.json (what ALS.load reads first), before JAX and the model are imported
        from alsx.folder import read_config

        read_config(Path(model))
    if getattr(a, "out", None) is not None:
        check_writable_folder(a.out, "--out")


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """Creates folder ``path`` if needed and writes (then removes) a probe file in it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder; give a folder to write the model into")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".alsx-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def check_split_input(data, a: argparse.Namespace) -> None:
    """Before splitting: what ``--split last`` and ``--split given`` need from the input."""
    if a.split == "last" and data.timestamps is None:
        raise UsageError(f"--split last needs timestamps; {a.data} has none (name the column with --timestamp)")
    if a.split == "given" and data.is_test is None:
        raise DataError(f"{a.data}: no is_test flags, which --split given needs (an 'is_test' array or column)")


def check_split(split, a: argparse.Namespace) -> None:
    """Before training: a split that leaves nothing to train on or nothing to evaluate on.

    Either would otherwise surface only after training (an empty ground truth breaks the
    evaluation) or train on nothing and exit 0.
    """
    if split is None:
        return
    s = split.summary()
    where = f"--split {a.split}"
    if split.kind == "given":
        if s["n_train"] == 0:
            raise DataError(
                f"{a.data}: is_test marks all {s['n_test']} entries as test; with --split given "
                "nothing is left to train on (use --split random, or fix is_test)"
            )
        if s["n_test"] == 0:
            raise DataError(
                f"{a.data}: is_test marks no entry as test; with --split given there is nothing to "
                "evaluate on (use --split none to train on everything, or --split random)"
            )
    if s["n_train"] == 0:
        raise UsageError(f"{where} leaves no entry to train on ({s['nnz']} entries in all)")
    if s["n_test"] == 0:
        hint = {
            "random": "rows need at least 2 entries to give one to the test part; raise --test-fraction",
            "heldout-rows": "raise --heldout-fraction",
            "last": "rows need at least 2 entries (and timestamps)",
        }.get(a.split, "")
        raise UsageError(
            f"{where} leaves no entry to evaluate on ({s['nnz']} entries, {s['n_rows']} rows"
            + (f"; {hint}" if hint else "")
            + "); use --split none to train without evaluation"
        )


def describe(exc: BaseException, command: str | None = None) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached ``alsx``'s top level."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, AlsxError):
        return exc.exit_code, _one_line(str(exc))
    if isinstance(exc, _loaded("alsx.plan", "MemoryPlanError")):  # says what to change: a usage problem
        return UsageError.exit_code, _one_line(str(exc))
    if isinstance(exc, _loaded("alsx.checkpoint", "CheckpointError")):
        return TrainingError.exit_code, _one_line(f"checkpoint: {exc}")
    if isinstance(exc, FloatingPointError):  # training produced non-finite tables
        return TrainingError.exit_code, _one_line(str(exc))
    if isinstance(exc, json.JSONDecodeError):
        model = command in ("evaluate", "recommend")
        what = "a file of the model folder" if model else "a JSON file"
        return (ModelError.exit_code if model else DataError.exit_code), _one_line(f"{what} is not valid JSON ({exc})")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        if exc.filename is None and " " in str(exc):  # raised with a sentence of its own
            return DataError.exit_code, _one_line(str(exc))
        name = exc.filename if exc.filename is not None else str(exc)
        reason = exc.strerror or next(text for kind, text in _OS_REASONS if isinstance(exc, kind))
        return DataError.exit_code, _one_line(f"{name}: {reason}")
    if isinstance(exc, OSError) and exc.strerror:  # the machine, not the input: disk full, ...
        return EXIT_INTERNAL, _one_line(f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror)
    if isinstance(exc, MemoryError):
        return EXIT_INTERNAL, "out of memory (try a smaller --dim, --dtype bfloat16 or fewer entries)"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return EXIT_INTERNAL, _one_line(f"internal error: {text} (a bug in alsx; rerun with --debug for the traceback)")


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    """``--debug`` on the top parser and (default untouched) on every subcommand, so it may come
    before or after the subcommand's name."""
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, print the Python traceback too (also: environment ALSX_DEBUG=1)",
    )
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug_flag(sub)


def leave(code: int) -> None:
    """Ends the process after an error without tearing down the native runtimes.

    At this point JAX's CPU client (its Eigen pools outlive JAX's own atexit clean-up),
    numba's OpenMP workers, OpenBLAS and pyarrow still hold threads, and a normal exit
    destroys them during interpreter finalization and in C++ static destructors: the one
    phase of an error path where a native pool can abort the process ("terminate called
    without an active exception", rc 134, seen under load) instead of leaving with the
    documented code.  Nothing is pending (checkpoints are written synchronously, outputs
    are closed files), so the streams are flushed and the process leaves at once, as
    ``alsx.distributed`` does when a peer is lost.
    """
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _loaded(module: str, name: str) -> tuple[type, ...]:
    """The class ``module.name`` if that module was imported (else no exception can be one), as a
    tuple for isinstance; reporting an error never imports JAX or Orbax."""
    cls = getattr(sys.modules.get(module), name, None)
    return (cls,) if isinstance(cls, type) else ()


def _one_line(text: str) -> str:
    """Newlines of a multi-line message folded, so the report stays one line."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip()) or "(no message)"
