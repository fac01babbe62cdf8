"""The WebGraph build as a PySpark job (the shape of ALX's own Beam/Spark pre-processing).

:func:`build_webgraph_spark` runs the same steps as
:func:`alsx.webgraph.build.build_webgraph` with Spark DataFrames (TLD filter,
dedupe, self-link policy, degree filter one pass or to a fixed point, dense
renumbering, held-out split) and writes the same on-disk dataset: the tagged
final edges go to a temporary Parquet folder, from which the CSR files are
built with the same external writer. Node numbering (original id order) and
the split (:func:`~alsx.webgraph.build.split_keys`, applied in a pandas UDF)
are defined by the data alone, so both builds give identical arrays and counts.

Supported inputs: Common Crawl vertices+edges, and integer edge lists. URL
edge lists are numpy-only (their node names need the build's vocabulary).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from alsx.webgraph.dataset import ExternalCSRBuilder, WebGraphDataset, open_dataset, write_manifest
from alsx.webgraph.heldout import history_counts, select_heldout, split_keys
from alsx.webgraph.inputs import CCInputs, describe_inputs, expand_paths, sniff
from alsx.webgraph.variant import SPARK_FIELDS, Variant, prepare_out, variant_of
from alsx.webgraph.vocabulary import normalize_tlds

_TRAIN, _HIST, _TRUTH = 0, 1, 2


def local_spark_session(cores: int = 2, shuffle_partitions: int = 4):
    """A small local-mode SparkSession (UI off, few shuffle partitions, this Python for workers)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("alsx-webgraph")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.ansi.enabled", "false")
        .getOrCreate()
    )


def _read_tsv(spark, paths: Sequence[str], *, sep: str = "\t", comment: str | None = None):
    reader = spark.read.options(sep=sep, header="false", quote="", escape="")
    if comment:
        reader = reader.option("comment", comment)
    return reader.csv(list(paths))


def build_webgraph_spark(
    inputs: CCInputs | Mapping[str, Any] | str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    variant: Variant | None = None,
    tld: str | Sequence[str] | None = None,
    spark=None,
    checksum: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> WebGraphDataset:
    """Spark twin of :func:`~alsx.webgraph.build.build_webgraph` (same arguments and output).

    Args:
      variant, options: as ``build_webgraph``; of the :class:`~alsx.webgraph.variant.Variant`
        fields only the filter, split, seed and ``max_shard_nnz`` apply (Spark sorts and
        scans in its own blocks), and only those are accepted as ``options``.
      spark: a SparkSession; by default a local one is started and stopped.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t0 = time.time()
    var = variant_of(variant, options, "build_webgraph_spark", allowed=SPARK_FIELDS)
    min_degree, fixed_point, keep_self_links = var.min_degree, var.fixed_point, var.keep_self_links
    out_dir = Path(out_dir)
    prepare_out(out_dir, overwrite)
    tlds = normalize_tlds(tld)
    own = spark is None
    if own:
        spark = local_spark_session()
    tmp = out_dir / "_spark"
    counts: dict[str, Any] = {}
    try:
        if isinstance(inputs, Mapping):
            inputs = CCInputs(**inputs)
        if isinstance(inputs, CCInputs):
            mode = "cc"
            v = _read_tsv(spark, expand_paths(inputs.vertices)).select(
                F.col("_c0").cast("long").alias("id"), F.lower(F.col("_c1")).alias("name")
            )
            e = _read_tsv(spark, expand_paths(inputs.edges)).select(
                F.col("_c0").cast("long").alias("s"), F.col("_c1").cast("long").alias("d")
            )
            counts["input_vertices"] = v.count()
            counts["input_edges"] = e.count()
            ids = v.select("id")
            known = e.join(ids.withColumnRenamed("id", "s"), "s", "left_semi").join(
                ids.withColumnRenamed("id", "d"), "d", "left_semi"
            )
            counts["edges_unknown_vertex"] = counts["input_edges"] - known.count()
            kept = v
            if tlds is not None:
                kept = v.filter(F.regexp_extract("name", r"^([^.]*)", 1).isin(tlds))
            kept = kept.select("id").distinct()
        else:
            paths = expand_paths(inputs)
            skip, delim, first = sniff(paths[0])
            if not (len(first) >= 2 and first[0].isdigit() and first[1].isdigit()):
                raise NotImplementedError("URL edge lists are built by build_webgraph only")
            if tlds is not None:
                raise ValueError("a TLD filter needs host names: give Common Crawl vertices+edges or a URL edge list")
            mode = "edgelist-int"
            raw = _read_tsv(spark, paths, sep=delim, comment="#" if skip else None)
            known = raw.select(F.col("_c0").cast("long").alias("s"), F.col("_c1").cast("long").alias("d"))
            counts["input_edges"] = known.count()
            kept = known.select(F.col("s").alias("id")).union(known.select(F.col("d").alias("id"))).distinct()
            counts["input_vertices"] = kept.count()
        kept = kept.cache()
        ke = known.join(kept.withColumnRenamed("id", "s"), "s", "left_semi").join(
            kept.withColumnRenamed("id", "d"), "d", "left_semi"
        )
        counts["tld_edges"] = ke.count()
        counts["tld_nodes"] = kept.count()
        # Stage ids: kept nodes in original id order (as the numpy build).
        stage_nodes = kept.withColumn("sid", F.row_number().over(Window.orderBy("id")) - 1).cache()
        se = (
            ke.join(stage_nodes.select(F.col("id").alias("s"), F.col("sid").alias("u")), "s")
            .join(stage_nodes.select(F.col("id").alias("d"), F.col("sid").alias("w")), "d")
            .select("u", "w")
        )
        counts["edges_before_dedupe"] = counts["tld_edges"]
        se = se.distinct().cache()
        counts["dedup_edges"] = se.count()
        counts["duplicates_removed"] = counts["edges_before_dedupe"] - counts["dedup_edges"]
        counts["self_links"] = se.filter(F.col("u") == F.col("w")).count()
        counts["self_links_dropped"] = 0 if keep_self_links else counts["self_links"]
        if not keep_self_links:
            se = se.filter(F.col("u") != F.col("w")).cache()

        # Degree filter on the stage graph.
        nodes = stage_nodes.select(F.col("sid").alias("n"))

        def degrees(edges, node_set):
            out = edges.groupBy(F.col("u").alias("n")).agg(F.count("*").alias("out"))
            inn = edges.groupBy(F.col("w").alias("n")).agg(F.count("*").alias("inn"))
            return node_set.join(out, "n", "left").join(inn, "n", "left").fillna(0, ["out", "inn"])

        def induced(node_set):
            return se.join(node_set.select(F.col("n").alias("u")), "u", "left_semi").join(
                node_set.select(F.col("n").alias("w")), "w", "left_semi"
            )

        history: list[int] = []
        keep_nodes = nodes
        edges = se
        if min_degree > 0:
            d = degrees(se, nodes)
            keep_nodes = (
                d.filter((F.col("out") >= min_degree) & (F.col("inn") >= min_degree)).select("n").localCheckpoint()
            )
            history.append(keep_nodes.count())
            while True:
                edges = induced(keep_nodes)
                if not fixed_point:
                    break
                d = degrees(edges, keep_nodes)
                new = (
                    d.filter((F.col("out") >= min_degree) & (F.col("inn") >= min_degree)).select("n").localCheckpoint()
                )
                c = new.count()
                if c == history[-1]:
                    break
                keep_nodes = new
                history.append(c)
        edges = edges.cache()
        counts["degree_filter_iterations"] = len(history)
        counts["degree_filter_nodes_per_iteration"] = history
        final_nodes = keep_nodes.withColumn("fid", F.row_number().over(Window.orderBy("n")) - 1).cache()
        n_final = final_nodes.count()
        counts["final_nodes"] = n_final
        fe = (
            edges.join(final_nodes.select(F.col("n").alias("u"), F.col("fid").alias("a")), "u")
            .join(final_nodes.select(F.col("n").alias("w"), F.col("fid").alias("b")), "w")
            .select(F.col("a").alias("u"), F.col("b").alias("v"))
            .cache()
        )
        counts["final_edges"] = fe.count()

        # Split: out-degrees to the driver (O(nodes)), same selection as numpy.
        od = fe.groupBy("u").agg(F.count("*").alias("deg")).toPandas()
        out_deg = np.zeros(n_final, dtype=np.int64)
        out_deg[od["u"].to_numpy()] = od["deg"].to_numpy()
        direct = not var.needs_finalize
        heldout = select_heldout(out_deg, var.heldout_fraction if not direct else 0.0, var.seed)
        counts["heldout_eligible_rows"] = None if direct else int((out_deg >= 2).sum())
        counts["heldout_rows"] = len(heldout)
        nh = history_counts(out_deg[heldout], var.history_fraction)
        import pandas as pd

        ho = spark.createDataFrame(
            pd.DataFrame({"u": heldout.astype(np.int64), "nh": nh.astype(np.int64)}), "u long, nh long"
        )
        ho_e = fe.join(F.broadcast(ho), "u")

        def add_keys(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for pdf in batches:
                pdf = pdf.copy()
                pdf["key"] = split_keys(pdf["u"].to_numpy(), pdf["v"].to_numpy(), var.seed)
                yield pdf

        keyed = ho_e.select("u", "v", "nh").mapInPandas(add_keys, "u long, v long, nh long, key long")
        rank = F.row_number().over(Window.partitionBy("u").orderBy("key", "v")) - 1
        tagged_ho = keyed.withColumn("part", F.when(rank < F.col("nh"), F.lit(_HIST)).otherwise(F.lit(_TRUTH))).select(
            "u", "v", "part"
        )
        tagged = (
            fe.join(F.broadcast(ho.select("u")), "u", "left_anti")
            .withColumn("part", F.lit(_TRAIN))
            .select("u", "v", "part")
        )
        tagged.unionByName(tagged_ho).write.parquet(str(tmp / "edges"))
        node_ids = (
            final_nodes.join(stage_nodes.select(F.col("sid").alias("n"), "id"), "n").select("fid", "id").toPandas()
        )
    finally:
        if own:
            spark.stop()

    try:
        fields = _write_from_parquet(tmp / "edges", out_dir, n_final, heldout, var.max_shard_nnz)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ids = np.zeros(n_final, dtype=np.int64)
    ids[node_ids["fid"].to_numpy()] = node_ids["id"].to_numpy()
    np.save(out_dir / "node_ids.npy", ids)
    fields["arrays"]["node_ids"] = "node_ids.npy"
    counts["train_nnz"] = fields["matrices"]["train_csr"]["nnz"]
    counts["foldin_nnz"] = fields["matrices"]["foldin_csr"]["nnz"]
    counts["truth_nnz"] = fields["matrices"]["truth_csr"]["nnz"]
    fields["nnz"] = counts["final_edges"]
    fields["split"] = var.split_params(len(heldout))
    params = {
        "inputs": describe_inputs(inputs),
        "input_mode": mode,
        "engine": "spark",
        "tld": tlds,
        **var.filter_params(),
        "seed": var.seed,
        "max_shard_nnz": var.max_shard_nnz,
    }
    write_manifest(
        out_dir,
        {**fields, "source": "build-spark", "params": params, "counts": counts, "seconds": round(time.time() - t0, 3)},
        checksum=checksum,
    )
    return open_dataset(out_dir)


def _write_from_parquet(folder: Path, out_dir: Path, n: int, heldout: np.ndarray, max_shard_nnz: int) -> dict[str, Any]:
    """Tagged (u, v, part) Parquet edges -> train CSR/CSC, fold-in and truth CSRs."""
    n_ho = len(heldout)
    b = {
        "train_csr": ExternalCSRBuilder(out_dir / "train_csr", n, n, max_shard_nnz=max_shard_nnz),
        "train_csc": ExternalCSRBuilder(out_dir / "train_csc", n, n, max_shard_nnz=max_shard_nnz),
        "foldin_csr": ExternalCSRBuilder(out_dir / "foldin_csr", n_ho, n, max_shard_nnz=max_shard_nnz),
        "truth_csr": ExternalCSRBuilder(out_dir / "truth_csr", n_ho, n, max_shard_nnz=max_shard_nnz),
    }

    def parts() -> Iterator[dict[str, tuple[np.ndarray, np.ndarray]]]:
        for batch in pads.dataset(str(folder), format="parquet").to_batches():
            u = batch.column("u").to_numpy()
            v = batch.column("v").to_numpy()
            p = batch.column("part").to_numpy()
            t, h, r = p == _TRAIN, p == _HIST, p == _TRUTH
            yield {
                "train_csr": (u[t], v[t]),
                "train_csc": (v[t], u[t]),
                "foldin_csr": (np.searchsorted(heldout, u[h]), v[h]),
                "truth_csr": (np.searchsorted(heldout, u[r]), v[r]),
            }

    for d in parts():
        for k, (r, _) in d.items():
            b[k].count(r)
    for x in b.values():
        x.allocate()
    for d in parts():
        for k, (r, c) in d.items():
            b[k].fill(r, c)
    matrices = {k: x.finalize() for k, x in b.items()}
    np.save(out_dir / "heldout_rows.npy", heldout.astype(np.int32))
    return {
        "n_nodes": n,
        "n_rows": n,
        "n_cols": n,
        "matrices": matrices,
        "arrays": {"heldout_rows": "heldout_rows.npy"},
    }
