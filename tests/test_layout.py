"""README.md's "Layout" section lists every module of src/alsx, and nothing that does not exist.

The section holds one fenced block; each line starting with ``alsx/`` names a module
(``alsx/core/cpu.py``) or a package (``alsx/core/``, standing for its ``__init__.py``), then a
one-line description. After moving, adding or removing a module, edit that block; the failure
message lists exactly the lines to add and to remove.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "alsx"


def layout_block(readme: str) -> str:
    """The first fenced block under the ``## Layout`` heading of ``readme``."""
    m = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert m, "README.md has no '## Layout' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", m.group(1), re.M | re.S)
    assert block, "README.md's Layout section has no fenced block listing the modules"
    return block.group(1)


def listed_entries(block: str) -> list[str]:
    """Module entries of the block, in order: first word of every line that starts with 'alsx/'."""
    return [line.split()[0] for line in block.splitlines() if line.startswith("alsx/")]


def normalise(entry: str) -> str:
    """A package entry ('alsx/core/') as its __init__ module; a module entry unchanged."""
    return entry + "__init__.py" if entry.endswith("/") else entry


def package_modules(package: Path = PACKAGE) -> set[str]:
    """Every .py file under the package, as 'alsx/...' paths (caches and hidden folders skipped)."""
    return {
        "alsx/" + p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if not any(part.startswith((".", "__pycache__")) for part in p.relative_to(package).parts)
    }


def layout_problems(readme: str, modules: set[str]) -> list[str]:
    """What is wrong between a README text and a set of module paths; empty when they agree."""
    entries = listed_entries(layout_block(readme))
    problems = []
    seen: set[str] = set()
    for e in entries:
        if normalise(e) in seen:
            problems.append(f"listed twice: {e}")
        seen.add(normalise(e))
    missing = sorted(modules - seen)
    extra = sorted(seen - modules)
    for m in missing:
        shown = m[: -len("__init__.py")] if m.endswith("/__init__.py") else m
        problems.append(f"missing from README Layout (add a line): {shown}")
    for e in extra:
        shown = e[: -len("__init__.py")] if e.endswith("/__init__.py") else e
        problems.append(f"listed in README Layout but not in src/alsx (remove the line): {shown}")
    return problems


def test_readme_layout_lists_every_module():
    problems = layout_problems((ROOT / "README.md").read_text(), package_modules())
    assert not problems, "README.md Layout and src/alsx disagree:\n  " + "\n  ".join(problems)


def test_layout_check_reports_missing_extra_and_duplicates():
    block = "alsx/              pkg\nalsx/a.py          a\nalsx/gone.py  g\nalsx/a.py  again\n"
    readme = f"# x\n\n## Layout\n\n```\n{block}```\n\n## After\n\nalsx/not_in_the_block.py\n"
    modules = {"alsx/__init__.py", "alsx/a.py", "alsx/cli/__init__.py", "alsx/cli/train.py"}
    assert layout_problems(readme, modules) == [
        "listed twice: alsx/a.py",
        "missing from README Layout (add a line): alsx/cli/",
        "missing from README Layout (add a line): alsx/cli/train.py",
        "listed in README Layout but not in src/alsx (remove the line): alsx/gone.py",
    ]
    assert layout_problems(readme.replace("alsx/gone.py  g\n", "alsx/cli/\nalsx/cli/train.py\n"), modules) == [
        "listed twice: alsx/a.py"
    ]
