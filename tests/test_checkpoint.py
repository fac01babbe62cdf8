"""Orbax checkpoints: round trip, fallback from corrupted / partial steps, kill -9 and resume.

In-process tests use whatever devices this process has (8 under CI); the kill
tests and the resume on another device count run in child processes, the user-path ones
through the ``alsx`` command (``python -m alsx.cli``).
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

from alsx.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError, CheckpointOptions, table_checksum
from alsx.checkpoint_files import DIGEST_NAME
from alsx.config import HParams, Packing
from alsx.core.engine import LocalEngine
from alsx.core.sharded import ShardedEngine
from alsx.data.matrix import coo_to_csr
from alsx.errors import TrainingError, UsageError
from alsx.train import run_epochs as train

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
    # Tamper with the recorded checksum: the data decodes, but no longer matches.  Without
    # the file list (a step saved by an older alsx) only the table checksums can tell.
    (tmp_path / "2" / DIGEST_NAME).unlink()
    meta_path = tmp_path / "2" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["checksums"]["w"] = (meta["checksums"]["w"] + 1) % (1 << 32)
    meta_path.write_text(json.dumps(meta))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        got = ck.restore(engine)
    assert got.epoch == 1 and "checksum" in got.skipped[0][1]


def test_changed_file_is_named_before_orbax_reads_it(engine, tmp_path, capfd):
    s1 = engine.epoch(engine.init_state(3))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, s1)
        ck.save(engine, engine.epoch(s1))
    meta_path = tmp_path / "2" / "meta" / "metadata"
    meta_path.write_text(meta_path.read_text().replace('"tied"', '"tied" ', 1))  # one byte more
    _corrupt_tables(str(tmp_path / "2"))
    capfd.readouterr()
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        got = ck.restore(engine)
    assert got.epoch == 1
    assert got.skipped[0][1].startswith("ValueError: file ") and (
        "bytes" in got.skipped[0][1] or "CRC-32" in got.skipped[0][1]
    )
    # Orbax never saw the garbled step: none of its stray tracebacks
    assert "Traceback" not in capfd.readouterr().err


def test_partial_step_is_ignored(engine, tmp_path):
    s1 = engine.epoch(engine.init_state(4))
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, s1)
    # What a run killed during a save leaves: a step under Orbax's temporary name.
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp-1234567")
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        assert ck.epochs() == [1]
        assert ck.restore(engine).epoch == 1
        train(engine, 3, checkpointer=ck)  # the killed run's epoch is saved again beside its leftover
        assert ck.epochs() == [3, 2, 1]


def test_all_corrupted_is_an_error(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, engine.epoch(engine.init_state(5)))
        _corrupt_tables(str(tmp_path / "1"))
        with pytest.raises(CheckpointError, match="no usable checkpoint") as e:
            ck.restore(engine)
    assert isinstance(e.value, TrainingError) and e.value.exit_code == 5
    assert "nothing was moved" in str(e.value) and _steps_on_disk(tmp_path) == ["1"]


def test_wrong_model_is_a_clear_error(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        ck.save(engine, engine.epoch(engine.init_state(6)))
    rows, cols = _problem()
    other = ShardedEngine(rows, cols, HParams(dim=4, solver="cholesky"), PK)
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        with pytest.raises(CheckpointMismatchError, match="dim/dtype") as e:
            ck.restore(other)
    assert isinstance(e.value, CheckpointError) and isinstance(e.value, UsageError) and e.value.exit_code == 2


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


def _kill_once(victim: subprocess.Popen, ready, timeout: float = 180) -> None:
    """SIGKILLs ``victim`` as soon as ``ready()`` holds (polled; it must still be running then)."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert victim.poll() is None, f"training ended early: {victim.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready within {timeout} s"
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_kill_then_resume_matches_uninterrupted_run(tmp_path):
    epochs = 40  # few enough that 1e-5 holds across device counts, enough to kill mid-run
    ckpt = str(tmp_path / "ckpt")
    victim = subprocess.Popen(
        _child(
            {
                "mode": "train",
                "devices": 2,
                "epochs": epochs,
                "ckpt": ckpt,
                "every": 1,
                "out": str(tmp_path / "never.npz"),
            }
        ),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_once(victim, lambda: max(_finished_steps(ckpt), default=0) >= 3)  # the 3rd finished checkpoint
    assert not (tmp_path / "never.npz").exists()  # it really died mid-run
    killed_at = max(_finished_steps(ckpt))
    assert 3 <= killed_at < epochs
    other_count = str(tmp_path / "ckpt3")
    shutil.copytree(ckpt, other_count)

    ref = _run({"mode": "train", "devices": 2, "epochs": epochs, "out": str(tmp_path / "ref.npz")})
    resumed = _run(
        {
            "mode": "train",
            "devices": 2,
            "epochs": epochs,
            "ckpt": ckpt,
            "every": 1000,
            "out": str(tmp_path / "resumed.npz"),
        }
    )
    assert int(resumed["epoch"]) == epochs
    assert np.array_equal(resumed["w"], ref["w"]) and np.array_equal(resumed["h"], ref["h"])

    # The same checkpoint resumed on 3 devices (another layout and padding).
    moved = _run(
        {
            "mode": "train",
            "devices": 3,
            "epochs": epochs,
            "ckpt": other_count,
            "every": 1000,
            "out": str(tmp_path / "moved.npz"),
        }
    )
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


# ---- resuming below a corrupted step, history, the epochs asked for ----------------------------


def test_resume_below_a_corrupted_step_sets_it_aside_and_finishes(engine, tmp_path, capsys):
    ref = train(engine, 5, seed=7)
    d = str(tmp_path / "ck")
    with Checkpointer(CheckpointOptions(d)) as ck:
        train(engine, 3, seed=7, checkpointer=ck, extra=lambda: {"history": ["up to here"]})
    assert _corrupt_tables(os.path.join(d, "3")) > 0
    resumed = []
    with Checkpointer(CheckpointOptions(d)) as ck:  # every epoch saved, epoch 3 among them
        got = train(engine, 5, seed=7, checkpointer=ck, on_resume=resumed.append)
        assert ck.epochs() == [5, 4, 3]
    assert [r.epoch for r in resumed] == [2] and resumed[0].extra == {"history": ["up to here"]}
    assert [s for s, _ in resumed[0].skipped] == [3]
    assert _steps_on_disk(d) == ["3", "3.corrupt", "4", "5"]  # moved aside, not deleted
    err = capsys.readouterr().err
    assert f"moved it to {os.path.join(d, '3.corrupt')}" in err and "alsx: resumed from epoch 2" in err
    for a, b in zip(engine.to_numpy(got), engine.to_numpy(ref)):
        assert np.array_equal(a, b)


def test_second_set_aside_of_the_same_epoch_gets_its_own_name(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        for _ in range(2):
            ck.save(engine, engine.init_state(0))
            assert ck.set_aside(0).endswith(("0.corrupt", "0.corrupt-2"))
        assert ck.epochs() == []
    assert _steps_on_disk(tmp_path) == ["0.corrupt", "0.corrupt-2"]


def test_checkpoint_past_the_epochs_asked_for_is_a_usage_error(engine, tmp_path):
    with Checkpointer(CheckpointOptions(str(tmp_path))) as ck:
        train(engine, 3, seed=0, checkpointer=ck)
        with pytest.raises(CheckpointMismatchError, match="epoch 3, past the 2 epochs asked for: ask for --epochs 3"):
            train(engine, 2, seed=0, checkpointer=ck)


# ---- the `alsx train` path: kill -9, a corrupted newest step, --resume (child processes) ----------


def _synthetic_npz(path) -> str:
    """A small skewed interaction matrix (tiny: each epoch takes milliseconds)."""
    rng = np.random.default_rng(11)
    n, m, nnz = 120, 90, 1500
    rows = rng.integers(0, n, nnz)
    cols = (rows * 7 + rng.zipf(1.6, nnz)) % m
    np.savez(path, rows=rows, cols=cols, shape=np.array([n, m]))
    return str(path)


def _alsx(*args: str) -> list[str]:
    return [sys.executable, "-m", "alsx.cli", *args]


def _alsx_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_alsx(*args), env=_env(), capture_output=True, text=True, timeout=240)


def _newest_step_with_digest(directory: str) -> int:
    done = [s for s in _finished_steps(directory) if os.path.exists(os.path.join(directory, str(s), DIGEST_NAME))]
    return max(done, default=0)


def _truncate_largest_table_file(step_dir: str) -> str:
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "tables")) for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    return victim


TRAIN = ("--dim", "8", "--split", "none", "--seed", "3", "--cg-steps", "3")


@pytest.mark.parametrize("backend", ["cpu", "jax"])
def test_cli_kill_corrupt_resume_equals_uninterrupted(tmp_path, backend):
    """kill -9 mid-run, the newest checkpoint garbled, then --resume: the tables equal an
    uninterrupted run's bit for bit (CG from the saved tables and, on the cpu backend, its
    saved basis is the same arithmetic), and history.json holds every epoch.

    The uninterrupted run is ``alsx.cli.main`` in this process (one compile fewer); the
    children get this process's device count, so the jax backend shards its tables alike."""
    import jax

    from alsx.cli import main

    data = _synthetic_npz(tmp_path / "d.npz")
    flags = TRAIN + ("--backend", backend, "--cpu-devices", str(jax.local_device_count()))
    first, ckpt = tmp_path / "first", str(tmp_path / "first" / "checkpoints")
    victim = subprocess.Popen(
        _alsx("train", data, "--out", str(first), "--epochs", "100000", "--checkpoint-every", "1", *flags),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_once(victim, lambda: _newest_step_with_digest(ckpt) >= 3)  # a fallback below the newest
    assert not (first / "row_embeddings.npy").exists()  # it really died mid-run
    newest = max(_finished_steps(ckpt))
    _truncate_largest_table_file(os.path.join(ckpt, str(newest)))
    epochs = str(newest + 3)

    resumed = _alsx_run(
        "train",
        data,
        "--out",
        str(tmp_path / "resumed"),
        "--epochs",
        epochs,
        "--resume",
        str(first),
        "--checkpoint-every",
        "1",
        *flags,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    fallback = newest - 1
    assert f"alsx: resumed from epoch {fallback} ({ckpt})" in resumed.stderr
    assert f"checkpoint {ckpt}/{newest} is unreadable" in resumed.stderr
    assert f"moved it to {ckpt}/{newest}.corrupt" in resumed.stderr
    if _newest_step_with_digest(ckpt) >= newest:  # (not killed between Orbax's commit and the file list)
        assert "Traceback" not in resumed.stderr
    assert os.path.isdir(os.path.join(ckpt, f"{newest}.corrupt"))  # the user's files are kept
    assert max(_finished_steps(ckpt)) == int(epochs)  # and the epoch was saved again, past it

    assert main(["train", data, "--out", str(tmp_path / "ref"), "--epochs", epochs, *flags]) == 0
    for name in ("row_embeddings.npy", "col_embeddings.npy"):
        a, b = np.load(tmp_path / "resumed" / name), np.load(tmp_path / "ref" / name)
        assert a.shape == b.shape and np.isfinite(a).all()
        if backend == "jax":  # XLA's programs are the same in every process: bit for bit
            assert np.array_equal(a, b), f"{name}: max |diff| {np.abs(a - b).max()}"
        else:  # a Numba kernel compiled in one process and loaded from its cache in another may
            # round differently (measured: 2e-6 of the tables' scale on a clean clone): float32 rounding
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), f"{name}: max |diff| {np.abs(a - b).max()}"
    hist = json.loads((tmp_path / "resumed" / "history.json").read_text())
    ref_hist = json.loads((tmp_path / "ref" / "history.json").read_text())
    assert [r["epoch"] for r in hist] == list(range(1, int(epochs) + 1))
    totals = [[r["loss"]["total"] for r in h] for h in (hist, ref_hist)]  # the killed run's epochs too
    np.testing.assert_allclose(totals[0], totals[1], rtol=0 if backend == "jax" else 1e-6)


def test_cli_resume_without_a_checkpoint_is_an_error(tmp_path):
    data = _synthetic_npz(tmp_path / "d.npz")
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    (empty / "3.orbax-checkpoint-tmp-1234").mkdir()  # what a run killed during its first save leaves
    proc = _alsx_run("train", data, "--out", str(tmp_path / "out"), "--epochs", "2", "--resume", str(empty), *TRAIN)
    assert proc.returncode != 0
    if "alsx: error:" in proc.stderr:  # the CLI's one-line report (exit code of a UsageError)
        assert proc.returncode == 2
    assert (
        f"--resume {empty}: no finished checkpoint in {empty} (found 1 unfinished save(s) of a killed run: "
        "3.orbax-checkpoint-tmp-1234); drop --resume to train from epoch 1"
    ) in proc.stderr
    assert not (tmp_path / "out" / "row_embeddings.npy").exists()  # nothing trained


def _train_args(**kw):
    from alsx.cli import build_parser

    a = build_parser().parse_args(["train", "d.npz", "--out", kw.pop("out", "o")])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_checkpointer_flags_are_checked(tmp_path):
    from alsx.cli.common import checkpointer_from_args as _checkpointer

    assert _checkpointer(_train_args()) is None
    with pytest.raises(UsageError, match=r"--resume .*missing: no such folder"):
        _checkpointer(_train_args(resume=str(tmp_path / "missing")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        _checkpointer(_train_args(resume=str(tmp_path / "file")))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"no finished checkpoint in .*empty/checkpoints \(it is empty\)"):
        _checkpointer(_train_args(resume=str(tmp_path / "empty")))
    with pytest.raises(UsageError, match="--checkpoint-every -1: must be >= 0"):
        _checkpointer(_train_args(checkpoint_every=-1))
    with pytest.raises(UsageError, match="--checkpoint-minutes nan: must be > 0"):
        _checkpointer(_train_args(checkpoint_minutes=float("nan")))
    ck = _checkpointer(_train_args(out=str(tmp_path / "o"), checkpoint_every=2))
    assert ck.options.directory == str((tmp_path / "o" / "checkpoints").resolve()) and ck.options.every_epochs == 2
    ck.close()


def test_dataset_dir_resume_keeps_the_whole_history(tmp_path, capsys):
    """``alsx train DATASET_DIR`` (the streaming engine) resumes with every epoch in history.json."""
    from alsx.cli import main
    from alsx.webgraph.synthetic import synth_webgraph

    ds = str(synth_webgraph(tmp_path / "wg", 300, 3000, seed=1).path)  # no held-out rows: no evaluation
    flags = ["--dim", "8", "--seed", "2"]
    assert main(["train", ds, "--out", str(tmp_path / "a"), "--epochs", "2", "--checkpoint-every", "1", *flags]) == 0
    assert (
        main(["train", ds, "--out", str(tmp_path / "b"), "--epochs", "3", "--resume", str(tmp_path / "a"), *flags]) == 0
    )
    assert f"alsx: resumed from epoch 2 ({tmp_path / 'a' / 'checkpoints'})" in capsys.readouterr().err
    first = json.loads((tmp_path / "a" / "history.json").read_text())
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[:2] == first
