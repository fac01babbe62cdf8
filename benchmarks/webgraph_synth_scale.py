"""Wall time and peak memory of ``alsx webgraph synth`` at scale (one child process per size).

Usage (from the repository root, alone on the machine)::

    python benchmarks/webgraph_synth_scale.py --nodes 5.7e6 --edges 8.2e8 --out /tmp/wg_scale
    python benchmarks/webgraph_synth_scale.py --nodes 5.7e6 --edges 1e8 2e8 --out /tmp/wg_scale

Each size runs ``python -m alsx.webgraph.cli webgraph synth`` under ``nice -n 10``;
the parent samples the child's /proc status and io every 0.5 s (anonymous and
file-backed resident memory, bytes written to disk) and takes the peak RSS from ``wait4`` (ru_maxrss,
which includes the memory-mapped output pages that are resident). Results go to
the ``synth-scale`` section of ``benchmarks/webgraph_report.md``; the dataset
is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import machine
from webgraph_synth_report import REPORT, replace_section


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k = line.split(":", 1)[0]
            if k in keys:
                out[k] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return out


def run_one(nodes: int, edges: int, out: Path, seed: int) -> dict:
    cmd = [
        "nice", "-n", "10", sys.executable, "-m", "alsx.webgraph.cli", "webgraph", "synth",
        "--nodes", str(nodes), "--edges", str(edges), "--out", str(out), "--seed", str(seed),
        "--overwrite", "--no-progress",
    ]  # fmt: skip
    peaks = {"RssAnon": 0, "RssFile": 0, "write_bytes": 0}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status_kib(proc.pid, ("RssAnon", "RssFile")).items():
                peaks[k] = max(peaks[k], v)
            try:  # bytes the child caused to be written to disk (page-cache write-back included)
                for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines():
                    if line.startswith("write_bytes:"):
                        peaks["write_bytes"] = max(peaks["write_bytes"], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            done.wait(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    done.set()
    th.join()
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"synth failed:\n{stderr[-4000:]}")
    summary = json.loads(stdout)
    m = json.loads((out / "manifest.json").read_text())
    disk = sum(f["bytes"] for f in m["files"])
    return {
        "nodes": nodes,
        "edges": edges,
        "wall_s": wall,
        "peak_rss_gib": ru.ru_maxrss / 2**20,  # ru_maxrss is KiB on Linux
        "peak_anon_gib": peaks["RssAnon"] / 2**20,
        "peak_file_gib": peaks["RssFile"] / 2**20,
        "arcs": m["nnz"],
        "generated": summary["counts"]["generated_edges"],
        "dups": summary["counts"]["duplicates_removed"],
        "disk_gib": disk / 2**30,
        "written_gib": peaks["write_bytes"] / 2**30,  # last sample before exit
        "chunks": m["params"]["n_chunks"],
        "cmd": " ".join(cmd[3:]).replace(sys.executable, "python"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=float, required=True)
    ap.add_argument("--edges", type=float, nargs="+", required=True)
    ap.add_argument("--out", default="/tmp/wg_scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--note", default="", help="extra text for the report section")
    a = ap.parse_args(argv)
    rows = []
    for e in a.edges:
        out = Path(a.out)
        r = run_one(int(a.nodes), int(e), out, a.seed)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    lines = [
        "| nodes | arcs generated | arcs kept (distinct) | chunks | wall time | peak RSS (ru_maxrss) "
        "| peak anonymous RSS | peak file-backed RSS | dataset on disk | written to disk |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']:,} | {r['generated']:,} | {r['arcs']:,} | {r['chunks']} "
            f"| {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min) "
            f"| {r['peak_rss_gib']:.2f} GiB | {r['peak_anon_gib']:.2f} GiB | {r['peak_file_gib']:.2f} GiB "
            f"| {r['disk_gib']:.2f} GiB | {r['written_gib']:.1f} GiB |"
        )
    argv_s = " ".join(argv if argv is not None else sys.argv[1:])
    body = f"""## Synthetic generator at scale

Command: `python benchmarks/webgraph_synth_scale.py {argv_s}`
(each size runs `{rows[0]["cmd"]}` with the sizes substituted, under `nice -n 10`).

Machine: {machine()}; shared with other developers' jobs while it ran, so times are upper bounds.

{chr(10).join(lines)}

The anonymous part of the RSS is the generator's O(nodes) tables, one chunk, one in-RAM row bucket per
orientation (`fill_budget_nnz` = 2**28 entries, 1 GiB each) and sort temporaries; the file-backed part is
pages of memory-mapped dataset files read back (e.g. the self-link count scans the CSR), which the kernel
can drop at any time. "Written to disk" is `write_bytes` of /proc/PID/io (spill file + dataset). {a.note}
"""
    replace_section(Path(REPORT), "synth-scale", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
