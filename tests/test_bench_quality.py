"""The pure helpers of benchmarks/quality.py and benchmarks/time_to_quality.py (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402
import time_to_quality  # noqa: E402


def test_points_expand_to_every_combination_with_typed_values():
    got = quality.expand("d=256,nu=1/0.5,init=uniform,reg=0.003/0.01")
    assert len(got) == 4
    assert {(g["nu"], g["reg"]) for g in got} == {(1.0, 0.003), (1.0, 0.01), (0.5, 0.003), (0.5, 0.01)}
    assert all(g["dim"] == 256 and isinstance(g["dim"], int) and g["init"] == "uniform" for g in got)
    with pytest.raises(SystemExit, match="unknown key 'lr'"):
        quality.expand("d=64,lr=0.1")


def test_old_records_key_as_runs_with_the_settings_they_used():
    old = {"dataset": "gowalla", "dim": 256, "epochs": 16, "reg": 0.003, "unobserved_weight": 0.03}
    old.update(solver="cg", cg_steps=3)
    explicit = {**old, "nu": 1.0, "init": "normal", "init_scale": 0.1, "block_size": 0}
    assert quality.record_key(old) == quality.record_key(explicit)
    assert quality.record_key(old) != quality.record_key({**explicit, "nu": 0.5})
    assert not quality.changed_settings(old) and quality.changed_settings({**old, "init": "uniform"})


def test_reach_sums_training_seconds_up_to_the_first_epoch_at_the_target():
    curve, secs = [0.10, 0.30, 0.29, 0.31], [5.0, 1.0, 1.0, 1.0]
    assert time_to_quality.reach(curve, secs, 0.30) == (2, 6.0)  # reaching it counts, not exceeding it
    assert time_to_quality.reach(curve, secs, 0.31) == (4, 8.0)
    assert time_to_quality.reach(curve, secs, 0.5) == (None, None)
