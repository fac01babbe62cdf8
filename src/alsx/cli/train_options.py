"""The options ``alsx tune`` gives ``alsx train``: ``--config FILE`` (a tune's best.json, flags on
the command line win) and ``--early-stopping PATIENCE`` (on a validation part carved from the
training input; the best epoch's tables are kept)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alsx.cli.common import add_model_args
from alsx.errors import UsageError

CONFIG_ABOUT = "about"  # the one key of a --config file that is not a flag: where it came from (ignored)


def config_keys() -> tuple[str, ...]:
    """The flags a --config file may set: the model flags' names (``unobserved_weight`` for
    --unobserved-weight)."""
    p = argparse.ArgumentParser(add_help=False)
    add_model_args(p)
    return tuple(vars(p.parse_args([])))


def add_train_options(p: argparse.ArgumentParser) -> None:
    """--config FILE and --early-stopping PATIENCE (with --validation-fraction, --metric) for ``alsx train``."""
    from alsx.config import METRIC, VALIDATION_FRACTION

    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON of model flags, e.g. the best.json of 'alsx tune' ({\"reg\": 0.01, ...}); flags "
        "given on the command line override it",
    )
    g = p.add_argument_group("early stopping")
    g.add_argument(
        "--early-stopping",
        type=int,
        default=0,
        metavar="PATIENCE",
        help="stop after PATIENCE evaluations (every --eval-every epochs) without a better "
        "validation metric and keep the best epoch's tables; the validation entries are "
        "--validation-fraction of each row of the training part (never the test part); the "
        "refit on all input trains for the best epoch count (default: off)",
    )
    g.add_argument(
        "--validation-fraction",
        type=float,
        default=VALIDATION_FRACTION,
        help="share of each training row held out for validation (default %(default)s)",
    )
    g.add_argument("--metric", default=METRIC, help="validation metric to maximise (default %(default)s)")
    p.set_defaults(config_parser=p)


def read_config(path: str) -> dict:
    """The flags of a --config file (UsageError naming the file, or the unknown keys and the known ones)."""
    try:
        cfg = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--config {path}: not JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(cfg, dict):
        raise UsageError(f'--config {path}: must be a JSON object of flags, e.g. {{"reg": 0.01}}')
    known = config_keys()
    unknown = sorted(set(cfg) - set(known) - {CONFIG_ABOUT})
    if unknown:
        raise UsageError(
            f"--config {path}: unknown keys {', '.join(unknown)} (known: {', '.join(known)}, "
            f"and '{CONFIG_ABOUT}' for notes)"
        )
    bad = [k for k, v in cfg.items() if k != CONFIG_ABOUT and not isinstance(v, (int, float, str, bool, type(None)))]
    if bad:
        raise UsageError(f"--config {path}: {', '.join(bad)} must be numbers, strings, booleans or null")
    cfg.pop(CONFIG_ABOUT, None)
    return cfg


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None):
    """``args`` with a --config file's values wherever the command line did not give the flag.

    The file's values become the sub-command's defaults and ``argv`` is parsed again, so a flag
    given explicitly (even at its default value) wins over the file.
    """
    path = getattr(args, "config", None)
    if not path:
        return args
    args.config_parser.set_defaults(**read_config(path))
    return parser.parse_args(argv)


def check_early_stopping(a: argparse.Namespace) -> None:
    """The flags of --early-stopping, as UsageErrors: run before any data is read (and JAX imported)."""
    if not getattr(a, "early_stopping", 0):
        return
    from alsx.validation import parse_metric

    if a.early_stopping < 0:
        raise UsageError(f"--early-stopping must be >= 0 (0: off), got {a.early_stopping}")
    if not 0.0 < a.validation_fraction < 1.0:
        raise UsageError(f"--validation-fraction must be strictly between 0 and 1, got {a.validation_fraction}")
    try:
        parse_metric(a.metric)
    except ValueError as e:
        raise UsageError(f"--metric: {e}") from None


def make_early_stopping(a: argparse.Namespace, train, model):
    """The EarlyStopping callback of --early-stopping (None without it), its validation
    entries carved from ``train`` (the training part); fit the model on its ``.train``."""
    if not getattr(a, "early_stopping", 0):
        return None
    check_early_stopping(a)
    from alsx.validation import EarlyStopping, validation_split

    val = validation_split(train, a.validation_fraction, a.split_seed)
    print(
        f"early stopping: validation {val.test.nnz:,} of the {train.nnz:,} training entries, patience "
        f"{a.early_stopping} evaluations of {a.metric}",
        file=sys.stderr,
    )
    return EarlyStopping(model, val, a.early_stopping, a.metric, every=max(1, a.eval_every))


# ---------------------------------------------------------------------------- alsx tune
