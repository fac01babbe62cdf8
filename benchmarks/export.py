"""Sizes and seconds of ``alsx export``: Parquet as one vector list column or one column per dimension, and npy.

  python benchmarks/export.py --models gowalla_d64=DIR,cnr_d64=DIR,...     # measure, write the table

Each model folder (written by ``alsx train``) is exported by ``alsx.serve.export`` in
every variant into a scratch folder; "write s" covers both tables (rows and columns),
"read s" reads both back into [n, d] float32 arrays (``read_parquet`` / ``np.load``),
and "MB" is the bytes on disk of the table files.  The best of --repeat runs is kept.
Writes benchmarks/results_export.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = (("parquet", "list"), ("parquet", "columns"), ("npy", None))


def measure(name: str, folder: str, repeat: int) -> list[dict]:
    from alsx.model import ALS
    from alsx.serve.export import export_model, read_parquet

    model = ALS.load(folder)
    out = []
    for fmt, layout in VARIANTS:
        best = None
        for _ in range(repeat):
            tmp = Path(tempfile.mkdtemp(prefix="alsx-export-"))
            try:
                t = time.perf_counter()
                export_model(model, tmp, fmt, layout or "list")
                write_s = time.perf_counter() - t
                size = sum(p.stat().st_size for p in tmp.iterdir() if p.suffix in (".parquet", ".npy"))
                t = time.perf_counter()
                if fmt == "parquet":
                    back = [read_parquet(tmp / f"{s}.parquet")[1] for s in ("rows", "cols")]
                else:
                    back = [np.load(tmp / f"{s}_embeddings.npy", allow_pickle=False) for s in ("row", "col")]
                read_s = time.perf_counter() - t
                assert np.array_equal(back[1], model.col_embeddings_)
            finally:
                shutil.rmtree(tmp)
            if best is None or write_s < best["write_s"]:
                best = {
                    "model": name,
                    "n_rows": len(model.row_embeddings_),
                    "n_cols": len(model.col_embeddings_),
                    "dim": model.row_embeddings_.shape[1],
                    "format": fmt,
                    "layout": layout or "",
                    "mb": size / 1e6,
                    "write_s": write_s,
                    "read_s": read_s,
                }
        print(best, file=sys.stderr)
        out.append(best)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="comma-separated NAME=MODEL_FOLDER")
    p.add_argument("--repeat", type=int, default=2, help="runs per variant, the fastest kept (default %(default)s)")
    p.add_argument("--out", default=str(HERE / "results_export.md"), help="table (default %(default)s)")
    args = p.parse_args()
    rows = [r for item in args.models.split(",") for r in measure(*item.split("=", 1), args.repeat)]
    lines = [
        "# alsx export: sizes and seconds",
        "",
        "Written by `benchmarks/export.py`. Command:",
        "",
        "    python benchmarks/export.py " + " ".join(sys.argv[1:]),
        "",
        (
            f"Machine: {platform.node()} ({os.cpu_count()} cores). **Timings are under contention** from other "
            "engineers on the same 2 cores; the lead may re-run. Both tables (rows and columns) per line; "
            f"Parquet with snappy compression, no dictionary, row groups of 65,536; best of {args.repeat}."
        ),
        "",
        "| model | rows | cols | d | format | layout | MB | write s | read s |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['n_rows']:,} | {r['n_cols']:,} | {r['dim']} | {r['format']} | {r['layout']} | "
        f"{r['mb']:.1f} | {r['write_s']:.2f} | {r['read_s']:.2f} |"
        for r in rows
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
