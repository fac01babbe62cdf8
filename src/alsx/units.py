"""Sizes in words, for messages of every layer (the memory planner, the input guards)."""

from __future__ import annotations


def human(n: float) -> str:
    """Bytes as B / KiB / MiB / GiB with 3 significant digits."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
