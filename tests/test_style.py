"""Lint and format: `ruff check` and `ruff format --check` over src, tests and benchmarks pass.

The rules are pyproject.toml's [tool.ruff]; to fix a failure run, from the repository root,
`ruff format src tests benchmarks && ruff check --fix src tests benchmarks`, then fix what remains by hand.
ruff comes with the dev extras that scripts/venv.sh installs, so it is not skipped when missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["src", "tests", "benchmarks"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *TARGETS], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_passes():
    proc = ruff("check", "--output-format", "concise", "--no-fix")
    assert proc.returncode == 0, f"ruff check {' '.join(TARGETS)} failed:\n{proc.stdout}{proc.stderr}"


def test_ruff_format_is_clean():
    proc = ruff("format", "--check", "--diff")
    assert proc.returncode == 0, (
        f"ruff format --check {' '.join(TARGETS)} failed (run `ruff format {' '.join(TARGETS)}`):\n"
        f"{proc.stdout[-20000:]}{proc.stderr}"
    )
