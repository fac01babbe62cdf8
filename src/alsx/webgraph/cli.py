"""``alsx webgraph build|synth|stats`` subcommands (argparse); no logic beyond parsing.

Wire into the main CLI with::

    from alsx.webgraph.cli import add_webgraph_commands
    add_webgraph_commands(subparsers)   # subparsers = parser.add_subparsers(...)
    ...
    args = parser.parse_args(argv)
    return args.func(args)

Each leaf parser sets ``func`` (taking the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def _shard(v: str) -> int:
    return int(float(v))


def add_webgraph_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``webgraph`` with ``build``, ``synth`` and ``stats`` under ``subparsers``."""
    wg = subparsers.add_parser("webgraph", help="WebGraph link-prediction data sets (ALX benchmark)")
    sub = wg.add_subparsers(dest="webgraph_command", required=True)

    def common_filter(p: argparse.ArgumentParser, heldout_default: float) -> None:
        p.add_argument(
            "--min-degree", type=int, default=0, help="K: kept nodes need >= K in- and out-links (default %(default)s)"
        )
        p.add_argument(
            "--fixed-point", action="store_true", help="iterate the degree filter until stable (ALX: one pass)"
        )
        p.add_argument("--drop-self-links", action="store_true", help="remove links u -> u")
        p.add_argument(
            "--heldout-fraction",
            type=float,
            default=heldout_default,
            help="share of rows held out of training (default %(default)s)",
        )
        p.add_argument(
            "--history-fraction",
            type=float,
            default=0.8,
            help="share of a held-out row given as history (default %(default)s)",
        )
        p.add_argument(
            "--max-shard-nnz", type=_shard, default=1 << 30, help="entries per shard file (default %(default)s)"
        )
        p.add_argument("--sha256", action="store_true", help="record file checksums in the manifest")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    b = sub.add_parser("build", help="Common Crawl vertices/edges (or an edge list) -> dataset")
    b.add_argument("--vertices", nargs="+", help="Common Crawl vertices files or globs (id TAB reversed.host)")
    b.add_argument(
        "--edges",
        nargs="+",
        required=True,
        help="edges files or globs (Common Crawl ids, or an edge list if no --vertices)",
    )
    b.add_argument("--out", required=True, help="output dataset folder")
    b.add_argument("--tld", nargs="+", default=None, help="keep only these TLDs, e.g. --tld de or --tld in")
    b.add_argument("--seed", type=int, default=0, help="seed of the held-out rows (default %(default)s)")
    b.add_argument("--chunk-edges", type=_shard, default=1 << 23, help="edges read per chunk (default %(default)s)")
    b.add_argument(
        "--spark", action="store_true", help="run the PySpark job (local mode) instead of the NumPy pipeline"
    )
    common_filter(b, heldout_default=0.1)
    b.set_defaults(func=_run_build)

    s = sub.add_parser("synth", help="seeded power-law web graph, streamed to a dataset")
    s.add_argument("--nodes", type=_shard, required=True, help="nodes of the graph")
    s.add_argument("--edges", type=_shard, required=True, help="arcs to generate (before dedupe)")
    s.add_argument("--out", required=True, help="output dataset folder")
    s.add_argument("--seed", type=int, default=0, help="seed of the graph (default %(default)s)")
    s.add_argument(
        "--hosts",
        type=_shard,
        default=None,
        help="hosts (contiguous id ranges; default: nodes // max(50, 4 x mean degree))",
    )
    for flag, default, what in (
        ("--locality", 0.8, "probability that an arc stays in its source's host"),
        ("--reciprocity", 0.27, "target share of arcs whose reverse exists"),
        ("--self-link-fraction", 0.027, "target share of self-links among arcs"),
        ("--alpha-out", 2.6, "power-law exponent of out-degrees, > 1"),
        ("--alpha-in", 2.1, "power-law exponent of in-degrees, > 1"),
        ("--dangling-fraction", 0.2, "share of nodes with no out-links"),
    ):
        s.add_argument(flag, type=float, default=default, help=f"{what} (default %(default)s)")
    s.add_argument(
        "--chunk-edges",
        type=_shard,
        default=1 << 23,
        help="arcs per chunk, about 60 bytes each in memory (default %(default)s)",
    )
    common_filter(s, heldout_default=0.0)
    s.set_defaults(func=_run_synth)

    t = sub.add_parser("stats", help="degree / reciprocity / self-link summary of a dataset (JSON)")
    t.add_argument("dataset", help="dataset folder written by 'alsx webgraph build' or 'synth'")
    t.set_defaults(func=_run_stats)
    return wg


def _filter_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "min_degree": a.min_degree,
        "fixed_point": a.fixed_point,
        "keep_self_links": not a.drop_self_links,
        "heldout_fraction": a.heldout_fraction,
        "history_fraction": a.history_fraction,
        "max_shard_nnz": a.max_shard_nnz,
        "checksum": a.sha256,
        "overwrite": a.overwrite,
    }


def _local_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The options of the builds that run in this process (build without --spark, synth)."""
    return {"seed": a.seed, "chunk_edges": a.chunk_edges, "progress": not a.no_progress, **_filter_kwargs(a)}


def _summary(ds) -> None:
    log.info("wrote %r", ds)
    json.dump({"path": str(ds.path), "n_nodes": ds.n_nodes, "counts": ds.manifest["counts"]}, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _run_build(a: argparse.Namespace) -> int:
    from alsx.webgraph.build import CCInputs, build_webgraph

    inputs: Any = CCInputs(vertices=a.vertices, edges=a.edges) if a.vertices else a.edges
    if a.spark:
        from alsx.webgraph.spark_build import build_webgraph_spark

        ds = build_webgraph_spark(inputs, a.out, tld=a.tld, seed=a.seed, **_filter_kwargs(a))
    else:
        ds = build_webgraph(inputs, a.out, tld=a.tld, **_local_kwargs(a))
    _summary(ds)
    return 0


def _run_synth(a: argparse.Namespace) -> int:
    from alsx.webgraph.synthetic import synth_webgraph

    ds = synth_webgraph(
        a.out,
        a.nodes,
        a.edges,
        hosts=a.hosts,
        locality=a.locality,
        reciprocity=a.reciprocity,
        self_link_fraction=a.self_link_fraction,
        alpha_out=a.alpha_out,
        alpha_in=a.alpha_in,
        dangling_fraction=a.dangling_fraction,
        **_local_kwargs(a),
    )
    _summary(ds)
    return 0


def _run_stats(a: argparse.Namespace) -> int:
    from alsx.webgraph.dataset import open_dataset
    from alsx.webgraph.stats import dataset_stats

    json.dump(dataset_stats(open_dataset(a.dataset)), sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m alsx.webgraph.cli webgraph synth ...``) until the main CLI wires it."""
    parser = argparse.ArgumentParser(prog="alsx")
    add_webgraph_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
