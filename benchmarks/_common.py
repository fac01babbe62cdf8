"""Shared helpers of the benchmark scripts.

The data folder (one option, ``--data DIR``, or ``$ALSX_DATA``), data sets and their evaluation
protocol, machine facts for the results headers, peak memory of the current process, and running
one measurement in a fresh child interpreter (so each library's peak RSS is its own).

Scripts import the installed package (``pip install -e .``, or ``PYTHONPATH=src`` for a checkout that
is not installed) and this module as ``import _common`` (Python puts a script's own folder on the path).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DATA_ENV = "ALSX_DATA"
DEFAULT_DATA = ROOT.parent / "shared" / "data"  # ../shared/data next to the repository root

FILES = {
    "gowalla": "gowalla_lightgcn.npz",
    "ml1m": "ml1m_implicit.npz",
    "cnr": "web_cnr2000.npz",
    "citeulike_a": "citeulike_a.npz",  # no shipped split: a per-row 20 % holdout (seed 0)
    "ml100k": "ml100k.npz",  # ratings read as 0/1 interactions; a per-row 20 % holdout (seed 0)
}
# Protocol per data set: the split shipped with the data, or held-out rows (strong generalisation).
PROTOCOL = {
    "gowalla": "given",
    "ml1m": "given",
    "cnr": "heldout_rows",
    "synth10m": "heldout_rows",
    "synth100m": "heldout_rows",
    "citeulike_a": "random",
    "ml100k": "random",
}
SYNTH = {"n_rows": 1_000_000, "n_cols": 200_000, "nnz": 10_000_000, "seed": 0}
SYNTH100M = {"n_rows": 10_000_000, "n_cols": 2_000_000, "nnz": 100_000_000, "seed": 0}  # SYNTH x 10


# ---------------------------------------------------------------------------- data


def data_dir() -> Path:
    """The folder holding the data sets: ``$ALSX_DATA``, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA)


def add_data_arg(parser) -> None:
    """Adds ``--data DIR`` to a benchmark's argument parser; ``use_data`` applies it after parsing."""
    parser.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"folder of the data sets (default: ${DATA_ENV}, else ../shared/data next to the "
        f"repository; now {data_dir()})",
    )


def use_data(args) -> Path:
    """Applies ``--data``: sets ``$ALSX_DATA`` so child processes read the same folder; returns the folder."""
    if getattr(args, "data", None) is not None:
        os.environ[DATA_ENV] = str(Path(args.data).resolve())
    return data_dir()


def data_file(name: str) -> Path:
    """A file of the data folder, e.g. ``data_file("web_cnr2000.npz")``; an error names the folder and the option."""
    path = data_dir() / name
    if not path.exists():
        raise SystemExit(f"{path}: not found (give --data DIR or set {DATA_ENV} to the folder of the data sets)")
    return path


def synthetic_powerlaw(n_rows: int, n_cols: int, nnz: int, seed: int = 0):
    """A power-law-ish binary matrix with about ``nnz`` distinct entries.

    Row and column of each entry are drawn independently with probability
    proportional to (rank + 10) ** -0.8 over a random permutation of the ids
    (heavy heads, long tails, like user activity and item popularity).
    """
    from alsx.data.matrix import Interactions

    rng = np.random.default_rng(seed)

    def draw(n, size, perm):
        p = (np.arange(n, dtype=np.float64) + 10.0) ** -0.8
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        return perm[np.searchsorted(cdf, rng.random(size), side="right").clip(0, n - 1)]

    prow, pcol = rng.permutation(n_rows), rng.permutation(n_cols)
    keys = np.empty(0, np.int64)
    want = nnz
    while keys.size < nnz:
        r = draw(n_rows, int(want * 1.15), prow).astype(np.int64)
        c = draw(n_cols, int(want * 1.15), pcol).astype(np.int64)
        keys = np.unique(np.concatenate([keys, r * n_cols + c]))
        want = nnz - keys.size + 1000
    keys = rng.permutation(keys)[:nnz]
    keys.sort()
    rows = (keys // n_cols).astype(np.int32)
    cols = (keys % n_cols).astype(np.int32)
    return Interactions(rows=rows, cols=cols, values=np.ones(rows.size, np.float32), shape=(n_rows, n_cols))


def load(name: str):
    """Interactions of a named data set (see FILES, plus 'synth10m' and 'synth100m')."""
    if name == "synth10m":
        return synthetic_powerlaw(**SYNTH)
    if name == "synth100m":
        return synthetic_powerlaw(**SYNTH100M)
    from alsx.data.ingest import load_interactions

    x, _ = load_interactions(str(data_file(FILES[name])))
    return x


# Held-out rows evaluated per data set when not all of them are: a seeded sample, the same for every
# library. synth10m holds out 100k rows; scoring each against 200k columns costs minutes per run at
# d=256, and 10k rows already put Recall@20 within about +-0.002 (binomial standard error).
EVAL_SAMPLE = {"synth10m": 10_000}


def split_of(name: str, x):
    """The evaluation split of a data set: given (is_test) or held-out rows (10 % rows, 80 % history).

    For data sets in ``EVAL_SAMPLE`` only a seeded sample of the held-out rows keeps its
    ground truth and fold-in history; the training part is the same either way.
    """
    from alsx.data.split import given_split, heldout_rows_split
    from alsx.eval.protocol import eval_rows

    if PROTOCOL[name] == "given":
        return given_split(x)
    if PROTOCOL[name] == "random":  # as `alsx train --split random` (--test-fraction 0.2 --split-seed 0)
        from alsx.data.split import random_holdout

        return random_holdout(x, fraction=0.2, seed=0)
    split = heldout_rows_split(x, row_fraction=0.1, history_fraction=0.8, seed=0)
    if name not in EVAL_SAMPLE:
        return split
    rows = eval_rows(split)
    keep = np.sort(np.random.default_rng(0).choice(rows, size=min(EVAL_SAMPLE[name], rows.size), replace=False))
    return dataclasses.replace(
        split,
        test=split.test.select(np.isin(split.test.rows, keep)),
        foldin=split.foldin.select(np.isin(split.foldin.rows, keep)),
    )


def train_cache(name: str) -> Path:
    """Where ``prepare_train`` keeps a synthetic data set's training part (git-ignored)."""
    return BENCH / "out" / "cache" / f"{name}-train.npz"


def prepare_train(name: str) -> Path:
    """Builds the training part of a synthetic data set's split and saves it (npz, uncompressed).

    Generating and splitting 100M entries takes minutes and leaves the process with
    gigabytes it will not need again; a timed child that loads this file holds only the
    training matrix, as a user's ``alsx train FILE`` does.  Real data sets are never cached
    here (their licences forbid copies).
    """
    if not name.startswith("synth"):
        raise ValueError(f"only synthetic data sets are cached, not {name!r}")
    path = train_cache(name)
    if path.exists():
        return path
    train = split_of(name, load(name)).train
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rows=train.rows, cols=train.cols, shape=np.asarray(train.shape, np.int64))
    tmp.rename(path)
    return path


def load_train(name: str):
    """The training part saved by ``prepare_train`` (binary: values are ones)."""
    from alsx.data.matrix import Interactions

    with np.load(train_cache(name)) as z:
        rows, cols, shape = z["rows"], z["cols"], tuple(int(v) for v in z["shape"])
    return Interactions(rows=rows, cols=cols, values=np.ones(rows.size, np.float32), shape=shape)


def als(dim: int, epochs: int, reg: float, unobserved_weight: float, **kw):
    """The estimator every benchmark times: seed 0, no progress bar, other settings from ``kw``."""
    import alsx

    return alsx.ALS(dim=dim, epochs=epochs, reg=reg, unobserved_weight=unobserved_weight, seed=0, progress=False, **kw)


def to_scipy(part, n_rows: int | None = None):
    """scipy CSR (float32 ones) of an Interactions part."""
    import scipy.sparse as sp

    shape = part.shape if n_rows is None else (n_rows, part.shape[1])
    return sp.csr_matrix((np.ones(part.nnz, np.float32), (part.rows, part.cols)), shape=shape)


def eval_parts(split):
    """(rows evaluated, truth CSR, history CSR) exactly as alsx.eval.protocol.evaluate builds them."""
    from alsx.eval.protocol import compact_rows, eval_rows

    rows = eval_rows(split)
    truth = compact_rows(split.test, rows)
    hist_src = split.foldin if split.foldin is not None else split.train
    history = compact_rows(hist_src, rows)
    return rows, truth, history


def csr_to_scipy(c):
    import scipy.sparse as sp

    return sp.csr_matrix((np.asarray(c.values, np.float32), c.indices, c.indptr), shape=(c.n_rows, c.n_cols))


# ---------------------------------------------------------------------------- machine


def peak_rss_gib() -> float:
    """This process's peak resident set size (VmHWM), GiB."""
    return proc_hwm_gib("self")


def proc_hwm_gib(pid) -> float:
    """Peak resident set size (VmHWM) of a process, GiB."""
    return _proc_status_gib(pid, "VmHWM")


def rss_gib() -> float:
    """This process's current resident set size (VmRSS), GiB."""
    return _proc_status_gib("self", "VmRSS")


def _proc_status_gib(pid, field: str) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 2**20
    except (OSError, AttributeError):
        return float("nan")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import jax

    return (
        f"{cpu}, {os.cpu_count()} logical cores, {mem:.1f} GiB RAM, no GPU (JAX {jax.__version__} "
        f"on {jax.default_backend()}), Python {platform.python_version()}, NumPy {np.__version__}"
    )


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def command_line() -> str:
    import shlex

    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


# ---------------------------------------------------------------------------- child processes
def extract(rev: str, into: str) -> Path:
    """The ``src`` folder of git revision ``rev``, unpacked under ``into`` (the "before" of a comparison)."""
    tar = Path(into) / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), rev, "src"], check=True)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return Path(into) / "src"


def run_child(script: Path, spec: dict, timeout: float | None = None, nice: int = 0) -> dict:
    """Runs ``script --child JSON`` in a fresh interpreter; returns its last JSON stdout line.

    On failure the dict has an ``error`` key (and ``timeout`` when it ran out of time).
    """
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    env = dict(os.environ)  # the child imports the same alsx and reads the same $ALSX_DATA
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "timeout": True, **spec}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            out = json.loads(line)
            out["child_wall_s"] = wall
            return out
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": f"exit {proc.returncode}: {tail}", **spec}


def emit(obj: dict) -> None:
    """Prints the child's result as the last stdout line."""
    sys.stdout.flush()
    print(json.dumps(obj, default=float), flush=True)


def append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=float) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fmt(v, nd=4):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)
