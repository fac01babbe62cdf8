"""Command line: subcommands parse flags and call the library.

    alsx demo                                  built-in synthetic graph, end to end
    alsx train DATA --out DIR [options]        fit, evaluate, refit on all input, save
    alsx evaluate DIR DATA                     re-evaluate a --no-refit model on its split
    alsx recommend DIR ROW [ROW ...] -k N      top-k unseen columns per row (--all, --out recs.parquet)
    alsx similar DIR ID [ID ...]               most similar columns (or rows)
    alsx export DIR --to OUT                   embeddings as Parquet / npy, an ANN index
    alsx webgraph {build,synth} ...            WebGraph data sets

One module per command (``alsx.cli.train``, ``.evaluate``, ``.demo``, ``.serve``), each with
``add_parser(subparsers)`` and its ``cmd_*``; shared flags in ``alsx.cli.common``; error
handling in ``alsx.cli.guard``.  Heavy modules (JAX, the data readers, the model) are imported
inside the commands, in every command module: JAX must not load before main() has set XLA_FLAGS
(--cpu-devices), and a wrong flag is reported at once.  Parsing, ``--help`` and every check that
can run before training (flags, paths, a model folder's config.json, reading the input file) load
no JAX, Numba or Optuna (tests/test_startup.py): an error costs ~0.5 s, not ~5
(benchmarks/results_startup.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from alsx.cli import demo, evaluate, serve, train, tune
from alsx.cli.guard import add_debug_flag, check_args, describe, leave
from alsx.cli.train import cmd_train  # noqa: F401 - `alsx.cli.cmd_train`, as before the split
from alsx.cli.train_options import apply_config
from alsx.compile_cache import enable_compile_cache, request_compile_cache  # noqa: F401 - benchmarks import the first here
from alsx.config import DEFAULTS  # noqa: F401 - benchmarks read the CLI's defaults from here
from alsx.webgraph.cli import add_webgraph_commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alsx", description="implicit ALS embeddings in JAX")
    sub = p.add_subparsers(dest="command", required=True)
    for command in (demo, train, evaluate, serve, tune):
        command.add_parser(sub)
    add_webgraph_commands(sub)
    return p


def configure(args: argparse.Namespace) -> None:
    if hasattr(args, "cpu_devices"):
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:  # an explicit XLA_FLAGS wins
            n = args.cpu_devices or min(os.cpu_count() or 1, 8)
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    request_compile_cache()  # alsx.compile_cache: JAX's persistent cache under the user's cache folder (JAX not imported)


def main(argv: list[str] | None = None) -> int:
    """``alsx``: returns the exit code; a failure is one line ``alsx: error: <message>`` on stderr
    with the code of ``alsx.errors`` (``--debug`` or ALSX_DEBUG=1 adds the traceback)."""
    parser = build_parser()
    add_debug_flag(parser)
    args = parser.parse_args(argv)  # a usage error exits 2 here (argparse)
    debug = getattr(args, "debug", False) or os.environ.get("ALSX_DEBUG", "") not in ("", "0")
    try:
        args = apply_config(parser, args, argv)  # --config FILE; flags on the command line win
        if args.command != "webgraph":
            check_args(args)  # before any data is read or JAX is imported
        configure(args)
        return int(args.func(args) or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            raise
        exc: BaseException = e  # raise SystemExit("error: ...") from older code paths: a usage error
        code, message = 2, str(e.code).removeprefix("error: ")
    except BaseException as e:  # noqa: BLE001 - the top of the program: everything becomes one line
        exc = e
        code, message = describe(e, args.command)
    if debug:
        import traceback

        traceback.print_exception(exc)
    print(f"alsx: error: {message}", file=sys.stderr, flush=True)
    if argv is None:  # the `alsx` program itself (not a caller's main([...])): see leave()
        leave(code)
    return code
