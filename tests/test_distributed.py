"""Multi-process runs on localhost (gloo): equality with one process, and failure handling."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from alsx.distributed import (
    EXIT_PEER_LOST,
    EXIT_STALLED,
    DistributedOptions,
    add_distributed_arguments,
    options_from_args,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _spawn(cfg: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "sharded_child.py"), json.dumps(cfg)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    out = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            out.append((None, err))
            continue
        out.append((p.returncode, err))
    return out


# ---- flags -------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_distributed_arguments(parser)
    return parser.parse_args(argv)


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "envhost:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    opts = options_from_args(
        _parse(
            [
                "--coordinator",
                "h:123",
                "--num-processes",
                "2",
                "--process-id",
                "1",
                "--heartbeat-timeout",
                "7",
                "--step-timeout",
                "60",
            ]
        )
    )
    assert (opts.coordinator, opts.num_processes, opts.process_id) == ("h:123", 2, 1)
    assert opts.heartbeat_timeout_s == 7 and opts.step_timeout_s == 60
    env_only = options_from_args(_parse([]))
    assert (env_only.coordinator, env_only.num_processes, env_only.process_id) == ("envhost:1", 4, 3)


def test_single_process_default(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    opts = options_from_args(_parse([]))
    assert not opts.multi_process and opts.num_processes == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_processes": 2}, "coordinator"),
        ({"num_processes": 2, "process_id": 2, "coordinator": "h:1"}, "process-id"),
        ({"coordinator": "nohostport"}, "HOST:PORT"),
        ({"num_processes": 0}, "num-processes"),
    ],
)
def test_bad_options_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributedOptions(**kwargs)


# ---- two processes x two devices ----------------------------------------------------------------


def test_two_processes_match_one(tmp_path):
    port = _free_port()
    out = str(tmp_path / "mp.npz")
    ckpt = str(tmp_path / "ckpt")
    procs = [
        _spawn({"mode": "mp", "devices": 2, "nproc": 2, "pid": i, "port": port, "epochs": 3, "out": out, "ckpt": ckpt})
        for i in range(2)
    ]
    results = _finish(procs, timeout=180)
    for code, err in results:
        assert code == 0, err[-4000:]
    z = np.load(out)
    for t in "wh":
        err = np.abs(z[t] - z[f"{t}_local"]).max() / np.abs(z[f"{t}_local"]).max()
        assert err <= 1e-5, f"{t}: 2 x 2 devices differ from one process by {err}"

    # Sharded top-k across the two processes equals the single-device top-k of the same tables.
    sys.path.insert(0, HERE)
    import sharded_child
    from alsx.serve.topk import topk_scores

    rows, cols = sharded_child.problem()
    want_s, want_i = topk_scores(z["w"], z["h"], 7, exclude=rows)
    assert np.array_equal(z["topk_ids"], want_i)
    np.testing.assert_allclose(z["topk_scores"], want_s, rtol=1e-5, atol=1e-6)

    # The checkpoint the two processes wrote together restores in this single process.
    from alsx.checkpoint import Checkpointer, CheckpointOptions
    from alsx.core.sharded import ShardedEngine

    rows, cols = sharded_child.problem()
    engine = ShardedEngine(rows, cols, *sharded_child.settings())
    with Checkpointer(CheckpointOptions(ckpt)) as ck:
        got = ck.restore(engine)
    assert got is not None and got.epoch == 3
    w, h = engine.to_numpy(got.state)
    assert np.array_equal(w, z["w"]) and np.array_equal(h, z["h"])


@pytest.mark.parametrize("victim", [1, 0])  # 0 also hosts the coordination service
def test_dead_peer_stops_the_other_process(tmp_path, victim):
    port = _free_port()
    progress = str(tmp_path / "progress")
    cfg = {
        "mode": "mp",
        "devices": 1,
        "nproc": 2,
        "port": port,
        "epochs": 3,
        "forever": True,
        "progress": progress,
        "heartbeat": 5,
        "out": str(tmp_path / "never.npz"),
    }
    procs = [_spawn(dict(cfg, pid=i)) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not (os.path.exists(progress + ".0") and os.path.exists(progress + ".1")):
            assert all(p.poll() is None for p in procs), "a process ended before training started"
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        os.kill(procs[victim].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code, err = _finish([procs[1 - victim]], timeout=60)[0]
        took = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Gloo sees the closed connection at the next collective and fail_fast exits at once.
    # When the coordinator itself dies, JAX's client may get there first and abort the
    # process with its own message; either way the survivor stops, and says why.
    ours = code == EXIT_PEER_LOST and "another process failed or became unreachable" in err
    jaxs = victim == 0 and code == -signal.SIGABRT and "distributed service detected fatal errors" in err
    assert ours or jaxs, f"exit {code}: {err[-3000:]}"
    assert took < 30, f"took {took:.1f}s to stop"


def test_watchdog_stops_a_stalled_process():
    proc = _spawn({"mode": "stall", "devices": 1, "timeout": 1.0})
    code, err = _finish([proc], timeout=60)[0]
    assert code == EXIT_STALLED, err[-2000:]
    assert "no epoch finished" in err


def test_two_processes_train_a_dataset_dir_like_one(tmp_path):
    """`alsx train DATASET_DIR` on 2 processes x 2 devices (each reading its row ranges of the
    memory-mapped CSRs) gives the embeddings of the one-process out-of-core run."""
    from alsx.cli import main
    from alsx.webgraph.synthetic import synth_webgraph

    ds = synth_webgraph(tmp_path / "wg", 300, 3000, seed=2, heldout_fraction=0.1)
    common = [
        "--dim",
        "8",
        "--epochs",
        "2",
        "--solver",
        "cholesky",
        "--reg",
        "0.05",
        "--unobserved-weight",
        "0.1",
        "--eval-every",
        "1",
    ]  # a mid-run evaluation: to_numpy is a collective for all processes
    assert main(["train", str(ds.path), "--out", str(tmp_path / "one")] + common) == 0
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alsx.cli",
                "train",
                str(ds.path),
                "--out",
                str(tmp_path / "mp"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--cpu-devices",
                "2",
            ]
            + common,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = _finish(procs, timeout=240)
    for code, err in results:
        assert code == 0, err[-4000:]
    assert "2 processes, 4 devices" in results[0][1]  # the sharded engine, not the streaming one
    for name in ("row_embeddings.npy", "col_embeddings.npy"):
        a, b = np.load(tmp_path / "mp" / name), np.load(tmp_path / "one" / name)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "mp" / "metrics.json").read_text())
    assert abs(m1["model"]["recall@20"] - m2["model"]["recall@20"]) <= 1e-6
