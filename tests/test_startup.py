"""``import alsx`` and the ``alsx`` command's parsing and checks do not import JAX (nor Numba, Optuna, SciPy).

Importing JAX costs 2-4 s on the shared machine (benchmarks/results_startup.md): a user who mistypes
a flag, a path or a model folder, or asks for ``--help``, gets the answer without paying for it.
Each case runs in a fresh interpreter on this checkout's src (the test process has JAX loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import alsx

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("jax", "numba", "optuna", "scipy")

# Runs alsx.cli.main(ARGV) (sys.argv[1]: a JSON list) and prints the exit code and the heavy modules loaded.
PROBE = f"""
import json, sys
import alsx, alsx.cli
try:
    code = alsx.cli.main(json.loads(sys.argv[1]))
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


def _main(argv: list[str]) -> tuple[dict, str]:
    """(the probe's report, stderr) of alsx.cli.main(argv) in a fresh interpreter."""
    res = _python("-c", PROBE, json.dumps(argv))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1]), res.stderr


def test_import_loads_no_jax():
    code = (
        "import sys, alsx, alsx.cli, alsx.webgraph; "
        f"print([m for m in {HEAVY!r} if m in sys.modules], alsx.__version__, sorted(set(alsx.__all__) - set(dir(alsx))))"
    )
    res = _python("-c", code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["[]", alsx.__version__, "[]"]  # nothing heavy; every public name listed by dir()


def test_help_of_every_command_loads_no_jax():
    """``--help`` of alsx and of each subcommand (and sub-subcommand) parses without JAX."""
    code = f"""
import argparse, contextlib, io, sys
from alsx.cli import build_parser

def paths(parser, path=()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from paths(sub, path + (name,))

shown = []
for path in paths(build_parser()):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*path, "--help"])
    shown.append((" ".join(path), "usage: alsx" in out.getvalue()))
print(len(shown), all(ok for _, ok in shown), [m for m in {HEAVY!r} if m in sys.modules])
"""
    res = _python("-c", code)
    assert res.returncode == 0, res.stderr[-3000:]
    n, ok, loaded = res.stdout.strip().split(maxsplit=2)
    assert int(n) >= 10 and ok == "True" and loaded == "[]", res.stdout


def _bad_csv(tmp_path: Path) -> Path:
    p = tmp_path / "bad.csv"
    p.write_text("u,i\n1,2\n3,abc,5\n")
    return p


CASES = {  # argv (with {tmp}) -> (exit code, words of the error line)
    "missing data file": (["train", "/no/such/file.csv", "--out", "{tmp}/out"], 3, "no such file"),
    "malformed data file": (["train", "{tmp}/bad.csv", "--out", "{tmp}/out"], 3, "line 3"),
    "bad flag value": (["train", "{tmp}/bad.csv", "--out", "{tmp}/out", "--dim", "0"], 2, "--dim"),
    "bad early-stopping metric": (
        ["train", "{tmp}/bad.csv", "--out", "{tmp}/out", "--early-stopping", "2", "--metric", "recall"],
        2,
        "--metric",
    ),
    "tune, bad metric": (["tune", "{tmp}/bad.csv", "--out", "{tmp}/out", "--metric", "ndcg@0"], 2, "--metric"),
    "tune, bad eval rows": (["tune", "{tmp}/bad.csv", "--out", "{tmp}/out", "--eval-rows", "-1"], 2, "--eval-rows"),
    "not a model folder": (["recommend", "{tmp}", "1"], 4, "config.json"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_before_training_load_no_jax(case, tmp_path):
    argv, code, needle = CASES[case]
    _bad_csv(tmp_path)
    report, stderr = _main([a.format(tmp=tmp_path) for a in argv])
    lines = [ln for ln in stderr.splitlines() if ln.startswith("alsx: error:")]
    assert report["code"] == code, stderr[-3000:]
    assert len(lines) == 1 and needle in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert report["loaded"] == [], f"{case}: {report['loaded']} imported before the error"


def test_the_program_itself_reports_a_missing_file_without_jax(tmp_path):
    """``python -m alsx.cli`` (what the ``alsx`` script runs, exiting through guard.leave): -X importtime
    lists every module the process imported."""
    res = _python("-X", "importtime", "-m", "alsx.cli", "train", "/no/such/file.csv", "--out", str(tmp_path / "o"))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("alsx: error:")]
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in res.stderr.splitlines() if ln.startswith("import time:")}
    assert res.returncode == 3 and len(errors) == 1 and "no such file" in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "alsx.cli.guard" in imported  # the listing is there
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_lazy_public_names():
    """The names alsx/__init__.py loads on first use are the library's own objects."""
    import alsx.config
    import alsx.model
    import alsx.tune
    from alsx import ALS, HParams, Packing, tune

    assert ALS is alsx.ALS is alsx.model.ALS
    assert (HParams, Packing) == (alsx.config.HParams, alsx.config.Packing)
    assert tune is alsx.tune and callable(tune) and tune.EarlyStopping is alsx.tune.EarlyStopping
    namespace: dict = {}
    exec("from alsx import *", namespace)
    assert {"ALS", "HParams", "Packing", "tune", "__version__"} <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        alsx.nope  # noqa: B018
    from alsx.webgraph import Variant, open_dataset
    from alsx.webgraph.dataset import open_dataset as direct
    from alsx.webgraph.variant import Variant as direct_variant

    assert (open_dataset, Variant) == (direct, direct_variant)


def test_compile_cache_set_before_jax_loads(tmp_path):
    """The command's compile cache (request_compile_cache, before JAX is imported) is the folder JAX uses once
    loaded, with alsx's threshold; a folder the user gave JAX wins; with JAX loaded it is enable_compile_cache."""
    code = f"""
import os, sys
from alsx.compile_cache import MIN_COMPILE_SECONDS, request_compile_cache
os.environ["ALSX_CACHE_DIR"] = {str(tmp_path / "theirs")!r}
os.environ["JAX_COMPILATION_CACHE_DIR"] = {str(tmp_path / "mine")!r}
assert request_compile_cache() == {str(tmp_path / "mine")!r}  # set already: left alone
del os.environ["JAX_COMPILATION_CACHE_DIR"]
assert request_compile_cache() == {str(tmp_path / "theirs")!r} and "jax" not in sys.modules
import jax
assert jax.config.jax_compilation_cache_dir == {str(tmp_path / "theirs")!r}
assert jax.config.jax_persistent_cache_min_compile_time_secs == MIN_COMPILE_SECONDS
assert request_compile_cache() == {str(tmp_path / "theirs")!r}
print("ok")
"""
    res = _python("-c", code)  # the code sets both variables itself, whatever this process has
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
