"""One input file read by one process vs by 2 processes that each parse only their part.

    python benchmarks/ingest_parts.py --lines 20000000

Writes a CSV of ``--lines`` ratings with string ids (user-…, item-…, with repeated pairs)
to a temporary folder, then loads it (1) with ``load_interactions`` in one process and
(2) with ``alsx.data.partitioned.load_partitioned`` in 2 ``jax.distributed`` processes on
this host (gloo, one CPU device each).  Per process: seconds to parse, agree on the
vocabulary and route entries to their owners; peak RSS, and how much of it loading added
over the interpreter with JAX and its collectives loaded; bytes of the file in its part.
Checks that both give the same matrix.  Writes benchmarks/results_ingest_parts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C

MD = C.BENCH / "results_ingest_parts.md"

CHILD = r"""
import json, os, sys, time
import numpy as np
cfg = json.loads(sys.argv[1])
import jax
if cfg["nproc"] > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{cfg['port']}", num_processes=cfg["nproc"], process_id=cfg["pid"])
from alsx.data import ingest as ig
from alsx import distributed as dist
dist.allreduce_sum(np.zeros(1, np.int64))  # JAX and its collectives loaded in both cases: the same baseline
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS:")
t = time.perf_counter()
if cfg["nproc"] == 1:
    x, s = ig.load_interactions(cfg["path"], row="user", col="item", value="rating")
    local, lo_hi = x, (0, x.shape[0])
    part_bytes = os.path.getsize(cfg["path"])
else:
    from alsx.data.partitioned import load_partitioned
    p = load_partitioned(cfg["path"], row="user", col="item", value="rating")
    x, s, local = None, p.summary, p.local
    start, end = ig.part_byte_range(cfg["path"], len("user,item,rating\n"), cfg["pid"], cfg["nproc"])
    part_bytes = end - start
secs = time.perf_counter() - t
hwm = status("VmHWM:")
key = local.rows.astype(np.int64) * local.shape[1] + local.cols
print(json.dumps({"pid": cfg["pid"], "seconds": secs, "vm_hwm": hwm, "base": base, "part_bytes": part_bytes,
                  "kept": s.kept, "merged": s.merged_duplicates, "shape": list(local.shape), "local_nnz": local.nnz,
                  "checksum": float(np.sum(local.values.astype(np.float64) * ((key % 1000003) + 1)))}))
"""


def write_csv(path: Path, lines: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(10, lines // 20), max(10, lines // 50)
    with open(path, "w") as f:
        f.write("user,item,rating\n")
        for lo in range(0, lines, 1_000_000):
            n = min(1_000_000, lines - lo)
            u = rng.integers(0, n_users, n)
            i = (rng.pareto(1.0, n) * 50).astype(np.int64) % n_items
            r = rng.integers(1, 6, n)
            f.write("".join(f"user-{a},item-{b},{c}\n" for a, b, c in zip(u, i, r, strict=True)))


def run(path: Path, nproc: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)  # the children import the same alsx
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps({"path": str(path), "nproc": nproc, "pid": i, "port": port})],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(nproc)
    ]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=3600)
        if p.returncode:
            raise RuntimeError(e[-3000:])
        out.append(json.loads(o.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=20_000_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.csv"
        t = time.perf_counter()
        write_csv(path, a.lines)
        size = path.stat().st_size
        print(f"wrote {size / 2**20:.0f} MiB in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        load0 = C.loadavg()
        one = run(path, 1)
        two = run(path, 2)
        load1 = C.loadavg()
    same = (
        one[0]["kept"] == two[0]["kept"]
        and one[0]["merged"] == two[0]["merged"]
        and one[0]["shape"] == two[0]["shape"]
        and sum(r["local_nnz"] for r in two) == one[0]["local_nnz"]
        and abs(sum(r["checksum"] for r in two) - one[0]["checksum"]) <= 1e-9 * abs(one[0]["checksum"])
    )
    rows = [
        "| processes | process | bytes in its part | seconds (parse + agree + route) | peak RSS GiB "
        "| of which loading | entries kept there |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, res in (("1", one), ("2", two)):
        for r in res:
            rows.append(
                f"| {label} | {r['pid']} | {r['part_bytes'] / 2**20:,.0f} MiB ({r['part_bytes'] / size:.1%}) | "
                f"{r['seconds']:.1f} | {r['vm_hwm'] / 2**30:.2f} | {(r['vm_hwm'] - r['base']) / 2**30:.2f} | "
                f"{r['local_nnz']:,} |"
            )
    md = [
        "## Reading one file from several processes",
        "",
        f"Command: `{C.command_line()}` ({C.now()}; load average {load0} → {load1}).",
        "",
        f"A CSV of {a.lines:,} lines ({size / 2**20:,.0f} MiB; string ids, {one[0]['merged']:,} repeated pairs "
        f"merged, matrix {one[0]['shape'][0]:,} x {one[0]['shape'][1]:,}, {one[0]['kept']:,} entries). One process "
        "runs `load_interactions`; two `jax.distributed` processes on this host (gloo, one CPU device each) run "
        "`load_partitioned`: each parses only the lines starting in its half of the bytes, the vocabulary is the "
        "union of the parts' distinct ids, and entries go to the process owning their row by all-to-all.",
        "",
        *rows,
        "",
        f"Same matrix from both (entries, merged duplicates, shape, a checksum of (row, col, value)): **{same}**. "
        "The two processes share this host's 2 cores, so seconds show the cost of the exchange, not a speed-up; "
        "the point is that each process parses and holds only its part.",
        "",
        f"Machine: {C.machine()}",
        "",
    ]
    MD.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
