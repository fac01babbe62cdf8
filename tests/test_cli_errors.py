"""`alsx` as a user runs it: every failure is one line ``alsx: error: ...`` with its exit code.

Most cases run the command in a subprocess (``python -m alsx.cli`` on this checkout's src);
the mapping of exceptions that a user cannot provoke cheaply (a bug, Ctrl-C, the memory
planner, a checkpoint) is checked in-process through ``main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from alsx import cli
from alsx.cli.guard import EXIT_INTERRUPTED, check_args, describe
from alsx.errors import DataError, ModelError, TrainingError, UsageError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env.update(PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    return env


def alsx(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *map(str, args)],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(res: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The one ``alsx: error:`` line of a failed run, checked: exit code, no traceback, no abort."""
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and "terminate called" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("alsx: error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny CSV with values, npz files with is_test all True / all False, one-entry rows."""
    d = tmp_path_factory.mktemp("cli_errors")
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 40, 600), rng.integers(0, 30, 600)
    (d / "ok.csv").write_text("user,item,n\n" + "".join(f"{r},{c},{1 + (r + c) % 3}\n" for r, c in zip(rows, cols)))
    np.savez(d / "all_test.npz", rows=rows.astype(np.int32), cols=cols.astype(np.int32), is_test=np.ones(600, bool))
    np.savez(d / "no_test.npz", rows=rows.astype(np.int32), cols=cols.astype(np.int32), is_test=np.zeros(600, bool))
    np.savez(d / "singles.npz", rows=np.arange(50, dtype=np.int32), cols=np.arange(50, dtype=np.int32) % 7)
    (d / "garbage.npz").write_bytes(b"this is not a zip archive\n")
    (d / "a_file").write_text("x")
    return d


# ---------------------------------------------------------------------------- flags (no data read)
@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--alpha", "-1"], ["--alpha", "-1"]),
        (["--alpha", "nan"], ["--alpha", "nan"]),
        (["--value", "n"], ["--value n", "--alpha A"]),
        (["--test-fraction", "1.5", "--split", "none"], ["--test-fraction", "1.5"]),
        (["--heldout-fraction", "0"], ["--heldout-fraction", "0"]),
        (["--epochs", "0"], ["--epochs", "0"]),
        (["--dim", "0"], ["--dim", "0"]),
        (["--reg", "-0.1"], ["--reg", "-0.1"]),
        (["--unobserved-weight", "inf"], ["--unobserved-weight", "inf"]),
        (["--nu", "-1"], ["--nu", "-1"]),
        (["--cg-steps", "0"], ["--cg-steps", "0"]),
        (["--eval-every", "-1"], ["--eval-every", "-1"]),
        (["--loss-every", "-2"], ["--loss-every", "-2"]),
        (["--k", "20", "0"], ["--k", "0"]),
        (["--solver", "block", "--dim", "10", "--block-size", "4"], ["--block-size 4", "--dim 10"]),
    ],
)
def test_bad_flags_are_usage_errors_before_any_work(tmp_path, data, capsys, flags, needles):
    out = tmp_path / "never"
    assert cli.main(["train", str(data / "ok.csv"), "--out", str(out), *flags]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("alsx: error:") and "\n" not in line
    assert all(n in line for n in needles), line


def test_every_flag_error_in_a_subprocess(tmp_path, data):
    """The same checks as the user meets them, one subprocess each for the main kinds."""
    ok = data / "ok.csv"
    error_line(alsx("train", ok, "--out", data / "a_file"), 2, "--out", "a_file", "is a file")
    error_line(alsx("train", ok, "--out", data / "a_file" / "sub"), 2, "--out", "cannot write")
    error_line(alsx("train", ok, "--out", tmp_path / "o", "--alpha", "-1"), 2, "--alpha must be", "-1")
    error_line(alsx("train", ok, "--out", tmp_path / "o", "--value", "n"), 2, "--value n", "--alpha A")
    error_line(
        alsx("train", ok, "--out", tmp_path / "o", "--test-fraction", "2", "--split", "none"),
        2,
        "--test-fraction",
        "2.0",
    )
    error_line(alsx("train", ok, "--out", tmp_path / "o", "--epochs", "0"), 2, "--epochs must be >= 1, got 0")
    error_line(alsx("train", tmp_path / "missing.csv", "--out", tmp_path / "o"), 3, "missing.csv", "no such file")
    error_line(alsx("recommend", tmp_path / "nomodel", "1"), 4, "nomodel", "no such model folder")
    error_line(alsx("recommend", data, "1", "-k", "0"), 2, "-k must be >= 1, got 0")


def test_argparse_usage_errors_exit_2(data, tmp_path):
    res = alsx("train", data / "ok.csv", "--out", tmp_path / "o", "--solver", "nope")
    assert res.returncode == 2 and "invalid choice: 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_debug_shows_the_traceback(data, tmp_path):
    for res in (
        alsx("--debug", "train", data / "ok.csv", "--out", tmp_path / "o", "--alpha", "-1"),
        alsx("train", data / "ok.csv", "--out", tmp_path / "o", "--alpha", "-1", ALSX_DEBUG="1"),
    ):
        assert res.returncode == 2
        assert "Traceback (most recent call last)" in res.stderr and "UsageError" in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("alsx: error: --alpha")
    # and after the subcommand's name too
    assert cli.main(["train", str(data / "ok.csv"), "--out", str(tmp_path / "o"), "--epochs", "0", "--debug"]) == 2


# ---------------------------------------------------------------------------- data and split, before training
def test_split_problems_stop_before_training(tmp_path, data):
    out = tmp_path / "o"
    error_line(
        alsx("train", data / "all_test.npz", "--split", "given", "--out", out),
        3,
        "all_test.npz",
        "is_test marks all",
        "entries as test",
        "nothing is left to train on",
    )
    error_line(
        alsx("train", data / "no_test.npz", "--split", "given", "--out", out),
        3,
        "no_test.npz",
        "is_test marks no entry as test",
    )
    res = alsx("train", data / "singles.npz", "--split", "random", "--out", out)
    error_line(res, 2, "--split random leaves no entry to evaluate on", "--split none")
    assert "epoch" not in res.stderr  # stopped before training started
    assert not (out / "row_embeddings.npy").exists()
    error_line(
        alsx("train", data / "ok.csv", "--row", "user", "--col", "item", "--split", "last", "--out", out),
        2,
        "--split last needs timestamps",
    )
    error_line(alsx("train", data / "garbage.npz", "--out", out), 3, "garbage.npz")


def test_damaged_model_folder_is_one_line(tmp_path, data):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    line = error_line(alsx("recommend", model, "1"), ModelError.exit_code)
    assert "json" in line.lower() or "config.json" in line


# ---------------------------------------------------------------------------- the mapping, in-process
@pytest.mark.parametrize(
    "exc, code, needle",
    [
        (UsageError("--dim must be >= 1, got 0"), 2, "--dim"),
        (DataError("f.csv: line 3: bad"), 3, "f.csv: line 3"),
        (ModelError("m: missing"), 4, "m: missing"),
        (TrainingError("peer lost"), 5, "peer lost"),
        (FloatingPointError("training diverged at epoch 3"), 5, "epoch 3"),
        (FileNotFoundError(2, "No such file or directory", "/x/y.csv"), 3, "/x/y.csv: No such file"),
        (IsADirectoryError(21, "Is a directory", "/x"), 3, "/x: Is a directory"),
        (PermissionError(13, "Permission denied", "/root/z"), 3, "/root/z: Permission denied"),
        (FileNotFoundError("/x/z.csv"), 3, "/x/z.csv: no such file or folder"),
        (
            FileNotFoundError("/d/manifest.json not found: not a dataset"),
            3,
            "error: /d/manifest.json not found: not a da",
        ),
        (json.JSONDecodeError("Expecting value", "{", 1), 3, "not valid JSON"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
        (RuntimeError("boom\nsecond line"), 1, "internal error: RuntimeError: boom second line"),
    ],
)
def test_main_maps_each_exception_to_one_line(monkeypatch, capsys, tmp_path, exc, code, needle):
    def fail(_args):
        raise exc

    monkeypatch.setattr(cli.demo, "cmd_demo", fail)
    monkeypatch.setattr(cli, "configure", lambda args: None)  # no XLA_FLAGS or JAX for this
    monkeypatch.delenv("ALSX_DEBUG", raising=False)
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alsx: error: ") and needle in err, err
    if code == 1:
        assert "rerun with --debug" in err


def test_planner_and_checkpoint_errors(monkeypatch):
    from alsx.checkpoint import CheckpointError
    from alsx.plan import MemoryPlanError

    assert describe(MemoryPlanError("training needs 9 GiB ... To fit, use: --dtype bfloat16.")) == (
        2,
        "training needs 9 GiB ... To fit, use: --dtype bfloat16.",
    )
    code, line = describe(CheckpointError("no usable checkpoint in /c"))
    assert code == 5 and "no usable checkpoint in /c" in line
    assert describe(json.JSONDecodeError("Expecting value", "", 0), "evaluate")[0] == 4


def test_check_args_accepts_the_defaults(tmp_path, data):
    args = cli.build_parser().parse_args(["train", str(data / "ok.csv"), "--out", str(tmp_path / "new" / "o")])
    check_args(args)  # no error, and --out now exists (created and probed)
    assert (tmp_path / "new" / "o").is_dir() and not list((tmp_path / "new" / "o").iterdir())


# ---------------------------------------------------------------------------- exit after an error
def test_failing_runs_exit_with_their_code_every_time(data, tmp_path):
    """Intermittent SIGABRT at exit ("terminate called without an active exception") after an
    error: N runs of a command that fails after JAX and the input reader started, two at a time."""
    n = int(os.environ.get("ALSX_EXIT_RUNS", "12"))  # ~3 s each; raise it to stress the exit path

    def one(i: int) -> subprocess.CompletedProcess:
        return alsx("train", data / "all_test.npz", "--split", "given", "--out", tmp_path / f"o{i}")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, range(n)))
    for res in results:
        error_line(res, 3, "is_test marks all")


def test_an_error_after_training_keeps_the_trained_tables(data, tmp_path, monkeypatch):
    """Evaluation runs after training; if it fails, the fitted tables are saved before the error."""
    import alsx.cli as cli_module

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr("alsx.eval.protocol.evaluate", broken)
    out = tmp_path / "kept"
    with pytest.raises(RuntimeError, match="evaluation broke"):
        cli_module.cmd_train(
            cli_module.build_parser().parse_args(
                [
                    "train",
                    str(data / "ok.csv"),
                    "--row",
                    "user",
                    "--col",
                    "item",
                    "--out",
                    str(out),
                    "--dim",
                    "4",
                    "--epochs",
                    "2",
                ]
            )
        )
    w = np.load(out / "row_embeddings.npy")
    assert w.shape == (40, 4) and np.isfinite(w).all() and np.abs(w).max() > 0
