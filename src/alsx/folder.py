"""Reading a model folder (``alsx train --out``) with every file checked.

Each reader raises :class:`~alsx.errors.ModelError` naming the file and what is wrong
(missing, empty, not JSON, wrong shape against ``config.json``), so ``ALS.load`` and
the CLI report a damaged folder in one line instead of a NumPy or JSON traceback.

The folder's entry files (CSR of stored entries, never pickle):
  * ``train.npz``: every entry each row had in the input (``alsx recommend`` excludes them);
  * ``trained.npz``: only when the tables were trained on a split's training part
    (``alsx train --no-refit``): the entries the tables saw, so ``alsx evaluate`` can refuse
    a split whose test entries the model trained on.  ``config.json``'s ``trained_on.entries``
    names the file that holds the tables' training entries (``train.npz`` when absent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from alsx.data.matrix import CSR, Interactions
from alsx.errors import ModelError, UsageError

CONFIG_KEYS = ("hparams", "epochs", "alpha", "tied", "seed", "packing", "shape")
SEEN_FILE = "train.npz"
TRAINED_FILE = "trained.npz"


def read_json(path: Path, *, what: str = "object") -> Any:
    """The parsed JSON of ``path``; ModelError when it is missing, empty or not JSON."""
    if not path.is_file():
        raise ModelError(f"{path}: missing (is {path.parent} a folder written by 'alsx train --out'?)")
    text = path.read_text(errors="replace")
    if not text.strip():
        raise ModelError(f"{path}: empty file (the model folder is damaged; train again)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(
            f"{path}: line {e.lineno}: not valid JSON ({e.msg}); the model folder is damaged, train again"
        ) from None
    kind = {"object": dict, "list": list}[what]
    if not isinstance(value, kind):
        raise ModelError(f"{path}: expected a JSON {what}, got {type(value).__name__}")
    return value


def read_config(folder: Path) -> dict:
    """config.json, with the keys ``ALS.load`` needs present and ``shape`` two counts."""
    path = folder / "config.json"
    cfg = read_json(path)
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ModelError(f"{path}: missing key(s) {', '.join(missing)}")
    shape = cfg["shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ModelError(f"{path}: 'shape' must be [n_rows, n_cols], got {shape!r}")
    if not isinstance(cfg["hparams"], dict) or not isinstance(cfg["packing"], dict):
        raise ModelError(f"{path}: 'hparams' and 'packing' must be JSON objects")
    return cfg


def load_table(path: Path, n_rows: int, dim: int, counted_by: str) -> np.ndarray:
    """A float [n_rows, dim] table; ``counted_by`` says where n_rows comes from (for the message)."""
    if not path.is_file():
        raise ModelError(f"{path}: missing (the model folder is incomplete; train again)")
    try:
        table = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ModelError(f"{path}: not a readable .npy table ({e})") from None
    if not isinstance(table, np.ndarray) or table.ndim != 2 or table.dtype.kind != "f":
        shape = getattr(table, "shape", None)
        raise ModelError(f"{path}: expected a 2-D float table, got shape {shape} dtype {getattr(table, 'dtype', '?')}")
    if table.shape[1] != dim:
        raise ModelError(f"{path}: {table.shape[1]} columns, but config.json has dim {dim}")
    if table.shape[0] != n_rows:
        raise ModelError(f"{path}: {table.shape[0]} rows, but {counted_by} has {n_rows}")
    return table


def load_csr(path: Path, n_rows: int, n_cols: int) -> CSR:
    """A CSR entry file (``train.npz`` / ``trained.npz``) of the model's shape, indices in range."""
    if not path.is_file():
        raise ModelError(
            f"{path}: missing (it holds the entries each row had, which 'alsx recommend' "
            "excludes and 'alsx evaluate' checks; train again)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("indptr", "indices", "values", "n_cols") if k not in z.files]
            if missing:
                raise ModelError(f"{path}: missing array(s) {', '.join(missing)}")
            csr = CSR(z["indptr"], z["indices"], z["values"], int(z["n_cols"]))
    except ModelError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError (object arrays), OSError, EOFError
        raise ModelError(f"{path}: not a readable .npz entry file ({type(e).__name__}: {e})") from None
    ip = csr.indptr
    if ip.ndim != 1 or len(ip) != n_rows + 1 or csr.n_cols != n_cols:
        raise ModelError(
            f"{path}: holds {len(ip) - 1} rows x {csr.n_cols} columns, but config.json's shape is [{n_rows}, {n_cols}]"
        )
    if ip[0] != 0 or np.any(np.diff(ip) < 0) or ip[-1] != len(csr.indices) or len(csr.values) != len(csr.indices):
        raise ModelError(f"{path}: inconsistent offsets (indptr) and entries; the file is damaged")
    if len(csr.indices) and (csr.indices.min() < 0 or csr.indices.max() >= n_cols):
        raise ModelError(f"{path}: column index out of range [0, {n_cols})")
    return csr


def trained_entries(folder: Path, cfg: dict) -> CSR:
    """The entries the folder's tables were trained on (``trained_on.entries``, else train.npz)."""
    name = (cfg.get("trained_on") or {}).get("entries", SEEN_FILE)
    n_rows, n_cols = cfg["shape"]
    return load_csr(folder / name, n_rows, n_cols)


def entry_keys(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """int64 row * n_cols + col, one key per (row, col) entry."""
    return rows.astype(np.int64) * np.int64(n_cols) + cols.astype(np.int64)


def count_overlap(trained: CSR, test: Interactions) -> int:
    """How many of ``test``'s entries are among ``trained``'s (same indices)."""
    if test.nnz == 0 or trained.nnz == 0:
        return 0
    rows = np.repeat(np.arange(trained.n_rows, dtype=np.int64), np.diff(trained.indptr))
    seen = np.sort(entry_keys(rows, trained.indices, trained.n_cols))
    q = entry_keys(test.rows, test.cols, trained.n_cols)
    pos = np.minimum(np.searchsorted(seen, q), len(seen) - 1)
    return int(np.count_nonzero(seen[pos] == q))


def _split_flags(params: dict) -> str:
    kind = params.get("split")
    if kind in (None, "none", "given"):
        return f"--split {kind}"
    return f"--split {kind} --split-seed {params.get('split_seed')}"


def check_overlap(folder: Path, cfg: dict, test: Interactions, asked: str, allow: bool) -> dict | None:
    """Refuses (UsageError), or with ``allow`` warns about, a split whose test entries the tables trained on.

    Found from the stored training entries (:func:`trained_entries`), not from flags: a model
    refit on all input overlaps every split of it; one kept on a split's training part
    (``--no-refit``) overlaps any other split.  ``asked`` names the split in flags.

    Returns:
      None without overlap, else {"n_test", "n_trained_on"} (to record with the metrics).
    """
    n = count_overlap(trained_entries(folder, cfg), test)
    if n == 0:
        return None
    on = cfg.get("trained_on") or {}
    share = f"{n:,} of the {test.nnz:,} test entries of {asked} ({100 * n / test.nnz:.1f} %)"
    if on.get("refit"):
        why = (
            "the model was refit on all input after its evaluation, so every split of that input overlaps; "
            "metrics.json holds the scores of the split-trained model. To evaluate again, train with "
            "--no-refit and evaluate with the split it was trained on"
        )
    else:
        why = (
            "they are in the training part it was kept on (--no-refit); evaluate with the split it was "
            f"trained on ({_split_flags(on.get('split') or cfg.get('split') or {})})"
        )
    if not allow:
        raise UsageError(
            f"{share} are entries the model in {folder} was trained on: {why}, "
            "or pass --allow-overlap to score them anyway (inflated)"
        )
    import sys

    print(
        f"WARNING: {share} were TRAINED ON by this model; the metrics below are inflated and do not measure "
        "generalisation (--allow-overlap)",
        file=sys.stderr,
    )
    return {"n_test": int(test.nnz), "n_trained_on": n}
