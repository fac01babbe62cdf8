"""Ingest at scale: wall time and peak memory of load_interactions on 100M entries.

Generates, in a temporary directory,

* ``edges.npz``: 100M random (row, col) int32 pairs, shape 10M x 2M (binary);
* ``weighted.npz``: the same pairs plus float32 values (the argsort + merge path);
* ``edges.txt``: the first 20M pairs as a whitespace edge list (text parser path),

ingests each in a fresh child process (so one case's memory does not leak into
the next) and records wall time and the child's peak RSS (``ru_maxrss``). The
results go to benchmarks/results_ingest.md (``collect.py`` copies it into RESULTS.md).
Peak memory is the child's ``VmHWM`` (``ru_maxrss`` where /proc is missing).

Usage:
  python benchmarks/ingest_scale.py                       # full run (about 20 GiB free RAM)
  python benchmarks/ingest_scale.py --nnz 1000000 --text-lines 200000 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MD = ROOT / "benchmarks" / "results_ingest.md"


def peak_rss_gib() -> float:
    """This process's peak resident set size.

    ``VmHWM`` belongs to the current address space, so it starts afresh at exec;
    ``ru_maxrss`` would carry over the parent's peak (getrusage(2): kept across execve).
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 2**20
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(path: str) -> None:
    """Runs in a fresh interpreter: ingest ``path`` and print one JSON line."""
    from alsx.data.ingest import load_interactions

    base = peak_rss_gib()  # interpreter + imports
    t0 = time.perf_counter()
    inter, summary = load_interactions(path)
    wall = time.perf_counter() - t0
    ingest_peak = peak_rss_gib()
    # Both orientations, as training builds them (vectorised counting sort, O(nnz)).
    t1 = time.perf_counter()
    rows_csr = inter.csr()
    cols_csr = inter.csc()
    csr_s = time.perf_counter() - t1
    assert rows_csr.nnz == cols_csr.nnz == inter.nnz
    out = {
        "wall_s": wall,
        "peak_rss_gib": ingest_peak,
        "csr_s": csr_s,
        "peak_rss_csr_gib": peak_rss_gib(),
        "import_rss_gib": base,
        "result_gib": (inter.rows.nbytes + inter.cols.nbytes + inter.values.nbytes) / 2**30,
        "summary": summary.to_dict(),
    }
    print(json.dumps(out))


def generate(tmp: Path, nnz: int, n_rows: int, n_cols: int, text_lines: int, seed: int) -> dict[str, Path]:
    """Writes the inputs; returns case name -> path."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_rows, nnz, dtype=np.int32)
    cols = rng.integers(0, n_cols, nnz, dtype=np.int32)
    shape = np.array([n_rows, n_cols], dtype=np.int64)
    paths = {"npz binary": tmp / "edges.npz", "npz valued": tmp / "weighted.npz"}
    np.savez(paths["npz binary"], rows=rows, cols=cols, shape=shape)
    values = rng.integers(1, 6, nnz).astype(np.float32)
    np.savez(paths["npz valued"], rows=rows, cols=cols, values=values, shape=shape)
    del values
    if text_lines:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        paths["edge list text"] = tmp / "edges.txt"
        with open(paths["edge list text"], "wb") as f:
            f.write(b"# random edge list: src dst\n")
            table = pa.table({"src": rows[:text_lines], "dst": cols[:text_lines]})
            pacsv.write_csv(
                table, f, write_options=pacsv.WriteOptions(include_header=False, delimiter=" ", quoting_style="none")
            )
    return paths


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        model = m.group(1).strip() if m else model
    except (OSError, subprocess.CalledProcessError):
        pass
    mem = "?"
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kib / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    py, npv = platform.python_version(), np.__version__
    return f"{model}, {os.cpu_count()} logical cores, {mem} RAM, Python {py}, NumPy {npv}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nnz", type=int, default=100_000_000)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--cols", type=int, default=2_000_000)
    ap.add_argument("--text-lines", type=int, default=20_000_000, help="0 to skip the text edge list")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="directory for the generated files (default: a new temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write results_ingest.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    load_at_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="alsx_ingest_") as tmp:
        t0 = time.perf_counter()
        paths = generate(Path(tmp), args.nnz, args.rows, args.cols, args.text_lines, args.seed)
        print(f"generated inputs in {time.perf_counter() - t0:.1f} s", flush=True)
        for case, path in paths.items():
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, cwd=ROOT
            )
            if proc.returncode:
                raise SystemExit(f"{case} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(case=case, size_gib=path.stat().st_size / 2**30)
            results.append(r)
            s = r["summary"]
            print(
                f"{case}: {s['rows_read']:,} read, {s['kept']:,} kept in {r['wall_s']:.1f} s, "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )

    lines = [
        "## Ingest",
        "",
        f"`load_interactions` on generated random data ({time.strftime('%Y-%m-%d')}).",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Matrix: {args.rows:,} x {args.cols:,}, uniform random int32 pairs (seed {args.seed}).",
        f"- Load average when started: {load_at_start:.2f} (other work shares these cores).",
        "- Each case runs in a fresh child process; wall time covers `load_interactions` only",
        "  (reading, validation, sort, de-duplication); peak RSS is the child's `VmHWM`,",
        "  including about {:.2f} GiB for the interpreter and imports.".format(results[0]["import_rss_gib"]),
        "",
        "| input | file GiB | entries read | kept | duplicates merged | wall s | peak RSS GiB | result GiB "
        "| + CSR and CSC s | peak RSS with both orientations GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["summary"]
        lines.append(
            f"| {r['case']} | {r['size_gib']:.2f} | {s['rows_read']:,} | {s['kept']:,} | {s['merged_duplicates']:,} "
            f"| {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['result_gib']:.2f} "
            f"| {r['csr_s']:.1f} | {r['peak_rss_csr_gib']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        MD.write_text(text)
        print(f"wrote {MD}; run python benchmarks/collect.py to update RESULTS.md")


if __name__ == "__main__":
    main()
