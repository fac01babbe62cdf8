"""Orbax checkpoints: round trip, fallback from corrupted / partial steps, kill -9 and resume.

In-process tests use whatever devices this process has (8 under CI); the kill
test and the resume on another device count run in child processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alsx.checkpoint import Checkpointer, CheckpointError, CheckpointOptions, table_checksum, train
from alsx.config import HParams, Packing
from alsx.core.engine import LocalEngine
from alsx.core.sharded import ShardedEngine
from alsx.data.matrix import coo_to_csr

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
HP = HParams(dim=8, reg=0.05, unobserved_weight=0.1, solver="cholesky")
PK = Packing(min_width=4, max_width=16, batch_entries=64, n_buckets=3)


def _problem(n=43, m=29, seed=3):
    rng = np.random.default_rng(seed)
    dense = rng.random((n, m)) < 0.2
    dense[1] = True
    r, c = np.nonzero(dense)
    v = np.ones(len(r), np.float32)
    return coo_to_csr(r, c, v, n, m), coo_to_csr(c, r, v, m, n)


@pytest.fixture(scope="module")
def engine():
    rows, cols = _problem()
    return ShardedEngine(rows, cols, HP, PK)


def _steps_on_disk(directory) -> list[str]:
    return sorted(p for p in os.listdir(directory))


def test_round_trip_is_exact(engine, tmp_path):
    state = engine.epoch(engine.init_state(1))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, state)
        got = ck.restore(engine)
    assert got is not None and got.epoch == 1 and got.skipped == ()
    for a, b in zip(engine.to_numpy(got.state), engine.to_numpy(state)):
        assert np.array_equal(a, b)
    # the restored tables are sharded like fresh ones
    assert got.state.w.sharding.is_equivalent_to(state.w.sharding, 2)


def test_local_engine_round_trip(tmp_path):
    rows, cols = _problem()
    eng = LocalEngine(rows, cols, HP, PK)
    state = eng.epoch(eng.init_state(0))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(eng, state)
        got = ck.restore(eng)
    assert got.epoch == 1
    assert np.array_equal(eng.to_numpy(got.state)[0], eng.to_numpy(state)[0])


def test_empty_directory_restores_nothing(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        assert ck.restore(engine) is None


def _corrupt_tables(step_dir: str) -> int:
    """Flips the second half of every data file of the step's tables; returns files touched."""
    touched = 0
    for root, _, files in os.walk(os.path.join(step_dir, "tables")):
        for f in files:
            p = os.path.join(root, f)
            if os.sep + "d" + os.sep in p + os.sep and os.path.basename(root) == "d":
                data = bytearray(open(p, "rb").read())
                for i in range(len(data) // 2, len(data)):
                    data[i] ^= 0x5A
                open(p, "wb").write(bytes(data))
                touched += 1
    return touched


def test_corrupted_newest_falls_back_to_previous(engine, tmp_path, caplog):
    s1 = engine.epoch(engine.init_state(2))
    s2 = engine.epoch(s1)
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, s1)
        ck.save(engine, s2)
        assert _corrupt_tables(str(tmp_path / "2")) > 0
        with caplog.at_level("WARNING"):
            got = ck.restore(engine)
    assert got.epoch == 1
    assert [s for s, _ in got.skipped] == [2]
    assert "unreadable" in caplog.text
    assert np.array_equal(engine.to_numpy(got.state)[0], engine.to_numpy(s1)[0])


def test_checksum_mismatch_falls_back(engine, tmp_path):
    s1 = engine.epoch(engine.init_state(3))
    s2 = engine.epoch(s1)
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, s1)
        ck.save(engine, s2)
    # Tamper with the recorded checksum: the data decodes, but no longer matches.
    meta_path = tmp_path / "2" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["checksums"]["w"] = (meta["checksums"]["w"] + 1) % (1 << 32)
    meta_path.write_text(json.dumps(meta))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        got = ck.restore(engine)
    assert got.epoch == 1 and "checksum" in got.skipped[0][1]


def test_partial_step_is_ignored(engine, tmp_path):
    s1 = engine.epoch(engine.init_state(4))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, s1)
    # What a run killed during a save leaves: a step under Orbax's temporary name.
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp-1234567")
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        assert ck.epochs() == [1]
        assert ck.restore(engine).epoch == 1


def test_all_corrupted_is_an_error(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, engine.epoch(engine.init_state(5)))
        _corrupt_tables(str(tmp_path / "1"))
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            ck.restore(engine)


def test_wrong_model_is_a_clear_error(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, engine.epoch(engine.init_state(6)))
    rows, cols = _problem()
    other = ShardedEngine(rows, cols, HParams(dim=4, solver="cholesky"), PK)
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        with pytest.raises(CheckpointError, match="dim/dtype"):
            ck.restore(other)


def test_checksum_is_exact_and_position_sensitive():
    import jax.numpy as jnp

    t = jnp.asarray(np.random.default_rng(0).normal(size=(10, 4)), jnp.float32)
    assert int(table_checksum(t)) == int(table_checksum(jnp.array(t)))
    assert int(table_checksum(t)) != int(table_checksum(t[::-1]))
    assert int(table_checksum(t)) != int(table_checksum(t.at[3, 2].add(1e-7)))
    assert int(table_checksum(t.astype(jnp.bfloat16))) >= 0


def test_save_policy_every_k_epochs(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path), every_epochs=2)) as ck:
        state = train(engine, 5, seed=0, checkpointer=ck)
        assert state.epoch == 5
        assert ck.epochs() == [5, 4, 2]  # every 2nd epoch, and the last one
        # A second call finds epoch 5 and does nothing more.
        again = train(engine, 5, seed=0, checkpointer=ck)
    assert np.array_equal(engine.to_numpy(again)[0], engine.to_numpy(state)[0])


def test_options_are_validated():
    with pytest.raises(ValueError, match="max_to_keep"):
        CheckpointOptions("x", max_to_keep=1)
    with pytest.raises(ValueError, match="every_minutes"):
        CheckpointOptions("x", every_minutes=0)


# ---- kill -9 and resume (child processes) ------------------------------------------------------


def _child(cfg: dict) -> list[str]:
    return [sys.executable, os.path.join(HERE, "sharded_child.py"), json.dumps(cfg)]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    return env


def _run(cfg: dict) -> np.lib.npyio.NpzFile:
    proc = subprocess.run(_child(cfg), env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return np.load(cfg["out"])


def _finished_steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return [int(p) for p in os.listdir(directory) if p.isdigit()]


def test_kill_then_resume_matches_uninterrupted_run(tmp_path):
    epochs = 40  # few enough that 1e-5 holds across device counts, enough to kill mid-run
    ckpt = str(tmp_path / "ckpt")
    victim = subprocess.Popen(_child({"mode": "train", "devices": 2, "epochs": epochs, "ckpt": ckpt,
                                      "every": 1, "out": str(tmp_path / "never.npz")}),
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while max(_finished_steps(ckpt), default=0) < 3:  # poll for the 3rd finished checkpoint
            assert victim.poll() is None, f"training ended early: {victim.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not (tmp_path / "never.npz").exists()  # it really died mid-run
    killed_at = max(_finished_steps(ckpt))
    assert 3 <= killed_at < epochs
    other_count = str(tmp_path / "ckpt3")
    shutil.copytree(ckpt, other_count)

    ref = _run({"mode": "train", "devices": 2, "epochs": epochs, "out": str(tmp_path / "ref.npz")})
    resumed = _run({"mode": "train", "devices": 2, "epochs": epochs, "ckpt": ckpt, "every": 1000,
                    "out": str(tmp_path / "resumed.npz")})
    assert int(resumed["epoch"]) == epochs
    assert np.array_equal(resumed["w"], ref["w"]) and np.array_equal(resumed["h"], ref["h"])

    # The same checkpoint resumed on 3 devices (another layout and padding).
    moved = _run({"mode": "train", "devices": 3, "epochs": epochs, "ckpt": other_count, "every": 1000,
                  "out": str(tmp_path / "moved.npz")})
    for t in "wh":
        err = np.abs(moved[t] - ref[t]).max() / np.abs(ref[t]).max()
        assert err <= 1e-5, f"{t}: {err}"


def test_save_policy_every_m_minutes(engine, tmp_path, monkeypatch):
    import alsx.checkpoint as ckmod

    now = [1000.0]
    monkeypatch.setattr(ckmod.time, "monotonic", lambda: now[0])
    with Checkpointer(CheckpointOptions(str(tmp_path), every_epochs=0, every_minutes=2)) as ck:
        assert not ck.due(1)
        now[0] += 119
        assert not ck.due(2)
        now[0] += 2  # 2 minutes and 1 second after the last save
        assert ck.due(3)
        ck.save(engine, engine.init_state(0))
        assert not ck.due(4)  # the save restarted the clock


def test_bfloat16_round_trip(tmp_path):
    rows, cols = _problem()
    eng = ShardedEngine(rows, cols, HParams(dim=8, solver="cholesky", dtype="bfloat16"), PK)
    state = eng.epoch(eng.init_state(0))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(eng, state)
        got = ck.restore(eng)
    assert str(got.state.w.dtype) == "bfloat16"
    assert np.array_equal(eng.to_numpy(got.state)[1], eng.to_numpy(state)[1])
