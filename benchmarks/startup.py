"""Wall seconds of ``alsx`` commands that end before any training: help, and the errors a user
gets for a wrong path or a malformed file, before and after a change to what they import.

Usage: python benchmarks/startup.py [--baseline REV] [--repeats 5]

Each run is a fresh ``alsx`` process (the console script next to this interpreter, else
``python -m alsx.cli``) on one ``src`` folder: "before" is git revision ``--baseline``
unpacked into a temporary folder, "after" this checkout.  Commands and codes alternate within
each repeat so both see the same load; the table gives the median of the repeats and the
load average (1 / 5 / 15 min) before the first and after the last.  Writes
benchmarks/results_startup.md and appends every run to results_startup.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, append_jsonl, command_line, extract, loadavg, now

OUT = ROOT / "benchmarks" / "results_startup.md"
JSONL = ROOT / "benchmarks" / "results_startup.jsonl"
COMMANDS = {  # label -> argv after `alsx` ({tmp}: a scratch folder)
    "alsx --help": ["--help"],
    "alsx train --help": ["train", "--help"],
    "alsx train /nonexistent.csv --out DIR": ["train", "/nonexistent.csv", "--out", "{tmp}/out"],
    "alsx train BAD.csv --out DIR (line 3 has 3 fields)": ["train", "{tmp}/bad.csv", "--out", "{tmp}/out"],
}

NOTES = """\
What the "after" code changed (session 12): `alsx/__init__.py` and `alsx/webgraph/__init__.py` load their
public names on first use (PEP 562), the defaults the CLI's flags show (--metric, --validation-fraction, --trials,
--pruner) live in `alsx.config`, the commands import the model, JAX and pyarrow's writers after their checks, a
model folder's config.json is read before `ALS.load`, `alsx train FILE` (one process) reads and checks its input
before `alsx.distributed.initialize` imports JAX, and the compile cache is handed to JAX through its environment
variables (`alsx.compile_cache.request_compile_cache`).  What is left in these commands: the interpreter itself
(~0.05 s), NumPy (~0.1-0.15 s, through `alsx.distributed` -> `alsx.collectives`, and the readers), and for the
malformed file the readers of `alsx.data` with pyarrow (~0.25-0.35 s).  tests/test_startup.py checks that none of these commands imports
JAX, Numba, Optuna or SciPy.
"""


def program() -> list[str]:
    script = Path(sys.executable).parent / "alsx"
    return [str(script)] if script.exists() else [sys.executable, "-m", "alsx.cli"]


def run_once(src: Path, argv: list[str], tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(src)
    t = time.perf_counter()
    res = subprocess.run(
        program() + [a.format(tmp=tmp) for a in argv], env=env, capture_output=True, text=True, timeout=300
    )
    return {"seconds": time.perf_counter() - t, "rc": res.returncode}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="e87b0bf", help="git revision measured as 'before'")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bad.csv").write_text("u,i\n1,2\n3,abc,5\n")
        srcs = {"before": extract(a.baseline, tmp), "after": ROOT / "src"}
        load_start, started = loadavg(), now()
        runs = {(label, code): [] for label in COMMANDS for code in srcs}
        for rep in range(a.repeats):
            for label, args in COMMANDS.items():
                for code, src in srcs.items():
                    r = run_once(src, args, tmp)
                    runs[label, code].append(r)
                    append_jsonl(JSONL, {"date": now(), "command": label, "code": code, "repeat": rep, **r})
                    print(f"{code:6} {r['seconds']:6.2f} s rc {r['rc']}  {label}", flush=True)
        load_end = loadavg()
    rows = []
    for label in COMMANDS:
        med = {code: statistics.median(r["seconds"] for r in runs[label, code]) for code in srcs}
        each = {code: ", ".join(f"{r['seconds']:.2f}" for r in runs[label, code]) for code in srcs}
        rcs = {code: sorted({r["rc"] for r in runs[label, code]}) for code in srcs}
        rows.append(
            f"| `{label}` | {med['before']:.2f} | **{med['after']:.2f}** | {med['before'] / med['after']:.1f}x | "
            f"{each['before']} | {each['after']} | {rcs['before']} / {rcs['after']} |"
        )
    text = "\n".join(
        [
            "# `alsx` start-up: commands that end before training, before and after",
            "",
            f"Command: `PYTHONPATH=src {command_line()}` ({started}). Machine: x86_64, {os.cpu_count()} CPU cores "
            f"shared with other engineers' jobs; load average {load_start} before the first run, {load_end} after "
            f"the last. before = git revision `{a.baseline}`; after = this checkout. Each run is a fresh "
            f"`{' '.join(Path(p).name for p in program())}` process; median of {a.repeats} alternated repeats.",
            "",
            "| command | before (s) | after (s) | before / after | before, each (s) | after, each (s) | exit codes |",
            "|---|---:|---:|---:|---|---|---|",
            *rows,
            "",
            NOTES,
        ]
    )
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
