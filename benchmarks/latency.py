"""Single-user recommend latency: alsx against implicit on the same tables.

For each data set (the shipped training part) and dimension, alsx trains a few epochs, and
implicit's CPU model is given the very same tables; then both answer ``--calls`` single-user
calls for random users (top 10, the user's training items excluded):

  alsx      model.recommend([u], k=10)                        (a loaded model: ALS.load)
  implicit  model.recommend(u, user_items[u], N=10)

both with one BLAS thread (threadpoolctl; a process that imports NumPy before alsx would
otherwise get OpenBLAS's thread pool, which costs 10-20x on a one-row product under load)

and, for a fold-in (the user's history given fresh):

  alsx      model.recommend_new(user_items[u], k=10)
  implicit  model.recommend(u, user_items[u], N=10, recalculate_user=True)

Reported per path: the first call (cold: whatever compiles or caches happens there), the
median and 99th percentile of the calls after it, and the slowest of them.

  PYTHONPATH=src python benchmarks/latency.py                 # ml1m and gowalla, d = 64, 128
  PYTHONPATH=src python benchmarks/latency.py --sets ml1m --dims 64 --calls 200

Writes ``benchmarks/results_latency.md`` (``--out``) with the command and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from alsx import ALS

ROOT = Path(__file__).resolve().parents[1]
FILES = {"ml1m": "ml1m_implicit.npz", "gowalla": "gowalla_lightgcn.npz"}


def train_matrix(path: Path) -> sp.csr_matrix:
    """The shipped training part (entries not marked is_test) as a binary CSR."""
    with np.load(path, allow_pickle=False) as z:
        keep = ~z["is_test"] if "is_test" in z.files else np.ones(len(z["rows"]), bool)
        shape = tuple(int(s) for s in z["shape"])
        return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (z["rows"][keep], z["cols"][keep])), shape=shape)


def timed(call, users: np.ndarray) -> dict:
    """ms of the first call and the median, p99 and max of the others."""
    times = []
    for u in users:
        t0 = time.perf_counter()
        call(int(u))
        times.append((time.perf_counter() - t0) * 1e3)
    rest = np.array(times[1:])
    return {
        "first": times[0],
        "p50": float(np.median(rest)),
        "p99": float(np.percentile(rest, 99)),
        "max": float(rest.max()),
    }


def implicit_model(w: np.ndarray, h: np.ndarray):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=w.shape[1], random_state=0)
    model.user_factors, model.item_factors = np.ascontiguousarray(w), np.ascontiguousarray(h)
    return model


def measure(name: str, x: sp.csr_matrix, dim: int, calls: int, epochs: int, seed: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    fitted = ALS(dim=dim, epochs=epochs, progress=False, seed=seed).fit(x)
    with tempfile.TemporaryDirectory() as tmp:
        model = ALS.load(fitted.save(Path(tmp) / "m"))  # serving starts from a model folder
    users = np.random.default_rng(seed).choice(x.shape[0], size=calls)
    out = []

    def row(library, path, t):
        out.append({"data": name, "dim": dim, "library": library, "path": path, **t})
        print(
            f"{name} d={dim} {library:8} {path:9} first {t['first']:8.2f} ms  p50 {t['p50']:.3f}  "
            f"p99 {t['p99']:.3f}  max {t['max']:.3f}",
            file=sys.stderr,
        )

    with threadpool_limits(1, "blas"):  # both libraries alike: one BLAS thread per call
        row("alsx", "recommend", timed(lambda u: model.recommend([u], k=10), users))
        row("alsx", "fold-in", timed(lambda u: model.recommend_new(x[u], k=10), users))
        other = implicit_model(model.row_embeddings_, model.col_embeddings_)
        row("implicit", "recommend", timed(lambda u: other.recommend(u, x[u], N=10), users))
        row("implicit", "fold-in", timed(lambda u: other.recommend(u, x[u], N=10, recalculate_user=True), users))
    return out


def machine() -> str:
    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}"


def report(rows: list[dict], command: str, load: str) -> str:
    import implicit

    lines = [
        "# Single-user recommend latency: alsx vs implicit",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; load average before the run: {load}",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; implicit {implicit.__version__}",
        "- the same tables in both (alsx trained, copied into implicit's CPU model); top 10, the user's",
        "  training items excluded; both with one BLAS thread (threadpoolctl); ms per call.",
        "- first: the first call on a freshly loaded model; p50 / p99 / max: the calls after it.",
        "- before (issue 18): every new shape compiled (one call 511 ms, the first 100 calls 2.9 s, then ~0.8 ms);",
        "  calls of a few rows now take a NumPy path (`alsx.serve.topk.topk_numpy`) that compiles nothing.",
        "- **Timings under contention**: a shared 2-core machine with other engineers' jobs running;",
        "  the lead re-runs this on a quiet machine.",
        "",
        "| data | d | library | path | first ms | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['data']} | {r['dim']} | {r['library']} | {r['path']} | {r['first']:.2f} | {r['p50']:.3f} | "
        f"{r['p99']:.3f} | {r['max']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("ALSX_DATA", ROOT.parent / "shared" / "data")),
        help="folder holding the .npz data sets (default: $ALSX_DATA or ../shared/data)",
    )
    p.add_argument("--sets", default="ml1m,gowalla", help="comma-separated data sets: ml1m, gowalla")
    p.add_argument("--dims", default="64,128", help="comma-separated embedding dimensions")
    p.add_argument("--calls", type=int, default=1000, help="single-user calls per path (the first is cold)")
    p.add_argument("--epochs", type=int, default=2, help="alsx training epochs (latency does not depend on them)")
    p.add_argument("--seed", type=int, default=0, help="training seed and the users' draw")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_latency.md", help="markdown written")
    a = p.parse_args(argv)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    for name in a.sets.split(","):
        x = train_matrix(a.data / FILES[name])
        for dim in (int(d) for d in a.dims.split(",")):
            rows += measure(name, x, dim, a.calls, a.epochs, a.seed)
    command = "PYTHONPATH=src python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    a.out.write_text(report(rows, command.strip(), load))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
