"""Rebuilds benchmarks/RESULTS.md from the sections each benchmark script writes.

Each script owns one fragment (its own markdown file, or the ``## Ingest`` section that
``ingest_scale.py`` keeps in RESULTS.md itself); this script only concatenates them in a
fixed order under one summary, so no figure is typed by hand.

Usage: python benchmarks/collect.py
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
FRAGMENTS = [  # (file, what it answers)
    ("summary.md", "Summary of the figures the issues ask for"),
    ("results_quality.md", None),
    ("results_compare.md", None),
    ("results_solvers.md", None),
    ("sharding_report.md", None),
    ("webgraph_report.md", None),
    ("webgraph_train_report.md", None),
    ("results_ingest_parts.md", None),
    ("results_conformance.md", None),
    ("results_ann.md", None),  # servecli: ANN recall and queries/s
    ("results_export.md", None),  # servecli: export sizes and seconds
]


def ingest_section(text: str) -> str:
    m = re.search(r"^## Ingest\n.*?(?=^## |\Z)", text, re.M | re.S)
    return m.group(0).rstrip() + "\n" if m else ""


def demote(md: str) -> str:
    """A fragment titled with '#' has every heading pushed one level down, below RESULTS.md's title."""
    if not re.search(r"^# ", md, re.M):
        return md
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", md, flags=re.M)


def main() -> None:
    old = RESULTS.read_text() if RESULTS.exists() else ""
    parts = ["# Benchmark results\n", "Every table below is written by the script and command named in it; "
             "`python benchmarks/collect.py` gathers them here.\n"]
    for name, _ in FRAGMENTS:
        path = HERE / name
        if path.exists():
            parts.append(demote(path.read_text()).rstrip() + "\n")
    ingest = ingest_section(old)
    if ingest:
        parts.append(ingest)
    RESULTS.write_text("\n".join(parts))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
