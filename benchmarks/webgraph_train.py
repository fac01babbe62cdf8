"""ALX-style WebGraph training table: streaming iALS on on-disk datasets.

    nice -n 5 python benchmarks/webgraph_train.py run NAME [NAME ...] [--data DIR]
    python benchmarks/webgraph_train.py table

Each NAME is built (once) into ``--root/NAME`` and then trained in a child process
(``child`` sub-command) so its peak RSS (VmHWM) is its own; results are appended to
``benchmarks/webgraph_train_results.jsonl`` and ``table`` renders the markdown.

Names: ``cnr2000`` (LAW cnr-2000 from the data folder's web_cnr2000.npz, 10 % of rows
held out) and synthetic stand-ins ``NODES:EDGES`` (e.g. ``500000:120000000``) from
``synth_webgraph`` with the same held-out split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common as C

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "webgraph_train_results.jsonl"


def build(name: str, root: Path) -> tuple[Path, float]:
    """Dataset directory for ``name`` and its build seconds (0 when it already existed)."""
    from alsx.webgraph.dataset import MANIFEST, open_dataset

    out = root / name.replace(":", "_")
    if (out / MANIFEST).exists():
        return out, float(open_dataset(out).manifest.get("seconds", 0.0))
    t = time.perf_counter()
    if name == "cnr2000":
        from alsx.webgraph.build import build_webgraph

        z = np.load(C.data_file("web_cnr2000.npz"))
        edges = root / "cnr2000.edges.txt"
        root.mkdir(parents=True, exist_ok=True)
        np.savetxt(edges, np.stack([z["rows"], z["cols"]], 1), fmt="%d", delimiter="\t")
        build_webgraph(str(edges), out, heldout_fraction=0.1, seed=0, overwrite=True)
        edges.unlink()
    else:
        from alsx.webgraph.synthetic import synth_webgraph

        n, e = (int(float(x)) for x in name.split(":"))
        synth_webgraph(out, n, e, seed=0, heldout_fraction=0.1, overwrite=True)
    return out, time.perf_counter() - t


def sample_rss(proc: subprocess.Popen, every: float = 0.5) -> dict[str, int]:
    """Peak RssAnon / RssFile of a running child, sampled from /proc until it exits.

    Reads stdout/stderr only after exit, so the child must not fill the pipes (it prints one line).
    """
    peak = {"peak_rss_anon_bytes": 0, "peak_rss_file_bytes": 0}
    keys = {"RssAnon:": "peak_rss_anon_bytes", "RssFile:": "peak_rss_file_bytes"}
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                k = line.split(":")[0] + ":"
                if k in keys:
                    peak[keys[k]] = max(peak[keys[k]], int(line.split()[1]) * 1024)
        except OSError:
            break
        time.sleep(every)
    return peak


def child(a: argparse.Namespace) -> None:
    """Trains one dataset in this process and prints one JSON line."""
    from alsx.cli import enable_compile_cache
    from alsx.config import HParams
    from alsx.webgraph.train import train_webgraph, vm_hwm_bytes

    enable_compile_cache()
    hp = HParams(dim=a.dim, solver=a.solver, cg_steps=a.cg_steps)
    res = train_webgraph(
        a.dataset,
        None,
        hp,
        epochs=a.epochs,
        tied=a.tied,
        max_eval_rows=a.max_eval_rows,
        chunk_entries=a.chunk_entries,
        compute_loss=False,
        fold_in_heldout=False,
    )
    res["vm_hwm"] = vm_hwm_bytes()
    print("RESULT " + json.dumps(res))


def run(a: argparse.Namespace) -> None:
    root = Path(a.root)
    for name in a.names:
        path, build_s = build(name, root)
        from alsx.webgraph.dataset import open_dataset

        ds = open_dataset(path)
        cmd = [
            sys.executable,
            __file__,
            "child",
            str(path),
            "--dim",
            str(a.dim),
            "--epochs",
            str(a.epochs),
            "--solver",
            a.solver,
            "--cg-steps",
            str(a.cg_steps),
            "--chunk-entries",
            str(a.chunk_entries),
        ]
        if a.max_eval_rows:
            cmd += ["--max-eval-rows", str(a.max_eval_rows)]
        if a.tied:
            cmd.append("--tied")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peaks = sample_rss(proc)  # anonymous vs file-backed (mapped dataset pages) peaks
        stdout, stderr = proc.communicate()
        p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        wall = time.perf_counter() - t
        line = [s for s in p.stdout.splitlines() if s.startswith("RESULT ")]
        if p.returncode or not line:
            sys.stderr.write(p.stderr[-4000:])
            raise SystemExit(f"{name}: child failed ({p.returncode})")
        res = json.loads(line[0][7:])
        rec = {
            "name": name,
            "nodes": ds.n_nodes,
            "edges": res["nnz"],
            "heldout_rows": len(ds.heldout_rows),
            "dim": a.dim,
            "solver": a.solver,
            "cg_steps": a.cg_steps,
            "tied": a.tied,
            "epochs": res["epochs"],
            "seconds_per_epoch": res["seconds_per_epoch"],
            "eval_seconds": res["eval_seconds"],
            "recall@20": res["metrics"]["model"]["recall@20"],
            "recall@50": res["metrics"]["model"]["recall@50"],
            "pop_recall@20": res["metrics"]["popularity"]["recall@20"],
            "n_eval_rows": res["metrics"]["model"]["n_eval_rows"],
            "peak_rss_bytes": res["vm_hwm"],
            "train_peak_rss_bytes": res.get("train_vm_hwm"),
            **peaks,
            "build_seconds": build_s,
            "child_wall_seconds": wall,
            "chunk_entries": a.chunk_entries,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(RESULTS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


def table(_: argparse.Namespace) -> None:
    recs = [json.loads(s) for s in RESULTS.read_text().splitlines() if s.strip()]
    print(
        "| graph | nodes | train edges | d | epochs | Recall@20 | Recall@50 | popularity R@20 | "
        "s/epoch (1st, incl. compile) | s/epoch (later) | peak RSS | build |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in recs:
        s = r["seconds_per_epoch"]
        later = f"{np.mean(s[1:]):.1f}" if len(s) > 1 else "n/a"
        print(
            f"| {r['name']} | {r['nodes']:,} | {r['edges']:,} | {r['dim']} | {r['epochs']} | "
            f"{r['recall@20']:.4f} | {r['recall@50']:.4f} | {r['pop_recall@20']:.4f} | {s[0]:.1f} | {later} | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['build_seconds']:.0f} s |"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    c.add_argument("dataset")
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+")
    r.add_argument("--root", default="/tmp/alsx_wgtrain")
    C.add_data_arg(r)
    for q in (c, r):
        q.add_argument("--dim", type=int, default=64)
        q.add_argument("--epochs", type=int, default=3)
        q.add_argument("--solver", default="cg")
        q.add_argument("--cg-steps", type=int, default=3)
        q.add_argument("--chunk-entries", type=int, default=1 << 24)
        q.add_argument("--max-eval-rows", type=int, default=None)
        q.add_argument("--tied", action="store_true")
    sub.add_parser("table")
    a = p.parse_args()
    C.use_data(a)
    {"child": child, "run": run, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
