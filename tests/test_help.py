"""Every option of every ``alsx`` command says what it does and shows its default; ``alsx train`` plots.

The parser is walked as argparse built it (sub-commands and their sub-commands), so an
option added later without help text fails here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from alsx.cli import build_parser

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHOWN = ("%(default)", "default")  # "(default %(default)s)" or words such as "default: the training run's"


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("alsx",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action


def _needs_default(action: argparse.Action) -> bool:
    """Options whose default a user must know: a value is taken and there is one."""
    return (
        bool(action.option_strings)
        and action.nargs != 0
        and not action.required
        and action.default not in (None, argparse.SUPPRESS)
    )


def test_every_option_has_help_and_shows_its_default():
    actions = list(_actions(build_parser()))
    commands = {c for c, _ in actions}
    assert {"alsx train", "alsx recommend", "alsx similar", "alsx export", "alsx evaluate"} <= commands
    no_help = [f"{c} {a.option_strings or a.dest}" for c, a in actions if not (a.help or "").strip()]
    assert not no_help, f"options without help: {no_help}"
    hidden = [
        f"{c} {a.option_strings}" for c, a in actions if _needs_default(a) and not any(s in a.help for s in SHOWN)
    ]
    assert not hidden, f"options whose help does not show the default: {hidden}"


def test_the_walk_would_catch_a_bare_option():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    sub.add_parser("x").add_argument("--bare", type=int, default=3, help="a number")
    ((_, a),) = list(_actions(p))
    assert _needs_default(a) and not any(s in a.help for s in SHOWN)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env.update(PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    return env


def test_recommend_help_documents_json_lines():
    res = subprocess.run(
        [sys.executable, "-m", "alsx.cli", "recommend", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0
    assert '{"row": ROW_ID, "recommendations": [{"id": COLUMN_ID, "score": S}' in res.stdout
    assert "--rows-file" in res.stdout and "--all" in res.stdout


def test_train_writes_training_png(tmp_path):
    import matplotlib.image

    from alsx.data.synthetic import community_graph

    x = community_graph(n_nodes=80, n_edges=700, n_communities=3, seed=1)
    data = tmp_path / "edges.csv"
    data.write_text("src,dst\n" + "".join(f"{r},{c}\n" for r, c in zip(x.rows, x.cols)))
    out = tmp_path / "model"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "alsx.cli",
            "train",
            str(data),
            "--out",
            str(out),
            "--dim",
            "4",
            "--epochs",
            "2",
            "--eval-every",
            "1",
            "--k",
            "5",
            "--no-refit",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    png = out / "training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image) > 0  # something is drawn
