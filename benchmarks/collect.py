"""Rebuilds benchmarks/RESULTS.md from the fragments the benchmark scripts write.

Each script owns one markdown fragment (``results_*.md`` or ``*_report.md``, named in
FRAGMENTS); this script only concatenates them in a fixed order under one title, so no
figure in RESULTS.md is typed by hand. The headline table is benchmarks/README.md and
the session-by-session log is benchmarks/HISTORY.md; both are written by hand and are
not touched here.

Usage: python benchmarks/collect.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
FRAGMENTS = [  # in the order they appear in RESULTS.md
    "results_quality.md",
    "results_compare.md",
    "results_solvers.md",
    "sharding_report.md",
    "webgraph_report.md",
    "webgraph_train_report.md",
    "results_ingest_parts.md",
    "results_conformance.md",
    "results_conformance_d256.md",
    "results_conformance_f64_d256.md",
    "results_ingest.md",
    "results_ann.md",
    "results_export.md",
    "results_latency.md",
    "results_defaults.md",
    "results_tune.md",
    "results_tune_top.md",
    "results_evaluation.md",
    "results_time_to_quality.md",
    "results_compile.md",
    "results_startup.md",
    "results_gpu_tiny.md",
]
HEADER = """# Benchmark results

Every table below is written by the script and command named in it; `python benchmarks/collect.py`
gathers them here from the fragments (`results_*.md`, `*_report.md`). The current headline figures are
in [README.md](README.md); what each session measured and changed, in [HISTORY.md](HISTORY.md).
"""


def demote(md: str) -> str:
    """A fragment titled with '#' has every heading pushed one level down, below RESULTS.md's title."""
    if not re.search(r"^# ", md, re.M):
        return md
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", md, flags=re.M)


def build() -> str:
    """The text of RESULTS.md: HEADER, then every fragment that exists, in FRAGMENTS order."""
    parts = [HEADER]
    for name in FRAGMENTS:
        path = HERE / name
        if path.exists():
            parts.append(demote(path.read_text()).rstrip() + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is not what the fragments give")
    a = p.parse_args(argv)
    text = build()
    if a.check:
        same = RESULTS.exists() and RESULTS.read_text() == text
        print(f"{RESULTS}: {'up to date' if same else 'stale; run python benchmarks/collect.py'}")
        return 0 if same else 1
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
