"""The finalize step of a WebGraph build: stage graph -> the variant's dataset files (filter, renumber, split).

:func:`stage_and_finalize` runs the whole pipeline after the read: stage the edges
(:mod:`alsx.webgraph.stage`), then filter, renumber and split them into the final
CSR shards (:func:`finalize_graph`); with nothing to filter or split the stage is the
dataset.  The builders write the manifest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from alsx.webgraph.dataset import SequentialCSRWriter, open_dataset, open_shard, write_manifest
from alsx.webgraph.heldout import history_counts, history_mask, select_heldout
from alsx.webgraph.stage import build_stage, degree_filter, iter_blocks
from alsx.webgraph.variant import EdgeChunks, Variant, progress_bar


def finalize_graph(
    stage_dir: str | os.PathLike, out_dir: str | os.PathLike, variant: Variant
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Filters, renumbers and splits a stage graph into ``out_dir`` as ``variant`` says (no manifest written).

    Rows of the final graph are the kept nodes in stage order. Held-out rows are
    empty in ``train_csr`` and their entries absent from ``train_csc``; their
    links are split into ``foldin_csr`` (history) and ``truth_csr``.

    Returns:
      (counts, manifest_fields): step counts, and the manifest's ``n_nodes``,
      ``matrices``, ``arrays``, ``split`` entries.
    """
    stage = open_dataset(stage_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    var = variant
    f = degree_filter(stage, var)
    keep = f.keep
    drop = not var.keep_self_links
    new_id = np.cumsum(keep, dtype=np.int64) - 1  # [n_stage] final id where kept
    kept_idx = np.flatnonzero(keep)
    n_final = len(kept_idx)

    heldout = select_heldout(f.out_degree[kept_idx], var.heldout_fraction, var.seed)  # final ids
    is_ho = np.zeros(stage.n_nodes, dtype=bool)  # [n_stage]
    is_ho[kept_idx[heldout]] = True
    n_hist_final = np.zeros(n_final, dtype=np.int64)
    n_hist_final[heldout] = history_counts(f.out_degree[kept_idx[heldout]], var.history_fraction)

    train = SequentialCSRWriter(out_dir / "train_csr", n_final, max_shard_nnz=var.max_shard_nnz)
    foldin = SequentialCSRWriter(out_dir / "foldin_csr", n_final, max_shard_nnz=var.max_shard_nnz)
    truth = SequentialCSRWriter(out_dir / "truth_csr", n_final, max_shard_nnz=var.max_shard_nnz)
    bar = progress_bar(var.progress, total=stage.manifest["nnz"] * 2, desc="finalize", unit="edge", unit_scale=True)
    for g0, g1, r, c in iter_blocks(stage.shards("train_csr"), var.block_nnz):
        m = keep[r] & keep[c]
        if drop:
            m &= r != c
        kr = g0 + np.flatnonzero(keep[g0:g1])  # kept stage rows of this block, final ids consecutive
        base = int(new_id[kr[0]]) if len(kr) else 0
        mt = m & ~is_ho[r]
        train.append(np.bincount(new_id[r[mt]] - base, minlength=len(kr)), new_id[c[mt]].astype(np.int32))
        hr = kr[is_ho[kr]]
        if len(hr):
            mh = m & is_ho[r]
            u, v = new_id[r[mh]], new_id[c[mh]]
            hist = history_mask(u, v, n_hist_final[u], var.seed)
            pos = np.searchsorted(hr, r[mh])
            foldin.append(np.bincount(pos[hist], minlength=len(hr)), v[hist].astype(np.int32))
            truth.append(np.bincount(pos[~hist], minlength=len(hr)), v[~hist].astype(np.int32))
        bar.update(len(r))
    train_t = SequentialCSRWriter(out_dir / "train_csc", n_final, max_shard_nnz=var.max_shard_nnz)
    for g0, g1, w, u in iter_blocks(stage.shards("train_csc"), var.block_nnz):
        # Transpose rows: w = link target, u = link source; held-out sources never train.
        m = keep[w] & keep[u] & ~is_ho[u]
        if drop:
            m &= w != u
        kw = g0 + np.flatnonzero(keep[g0:g1])
        base = int(new_id[kw[0]]) if len(kw) else 0
        train_t.append(np.bincount(new_id[w[m]] - base, minlength=len(kw)), new_id[u[m]].astype(np.int32))
        bar.update(len(w))
    bar.close()
    matrices = {
        "train_csr": train.close(),
        "train_csc": train_t.close(),
        "foldin_csr": foldin.close(),
        "truth_csr": truth.close(),
    }
    if matrices["train_csr"]["nnz"] != matrices["train_csc"]["nnz"]:  # pragma: no cover - a bug guard
        raise RuntimeError("train CSR and CSC disagree")
    np.save(out_dir / "heldout_rows.npy", heldout)
    arrays = {"heldout_rows": "heldout_rows.npy"}
    for name, rel in stage.manifest["arrays"].items():
        if name == "heldout_rows":
            continue
        a = stage.array(name)
        np.save(out_dir / rel, np.asarray(a)[kept_idx])  # per-node arrays follow the renumbering
        arrays[name] = rel
    counts = {
        "self_links": f.self_links,
        "self_links_dropped": f.self_links if drop else 0,
        "degree_filter_iterations": f.iterations,
        "degree_filter_nodes_per_iteration": f.nodes_per_iteration,
        "final_nodes": n_final,
        "final_edges": f.n_edges,
        "heldout_eligible_rows": int((f.out_degree[kept_idx] >= 2).sum()),
        "heldout_rows": len(heldout),
        "train_nnz": matrices["train_csr"]["nnz"],
        "foldin_nnz": matrices["foldin_csr"]["nnz"],
        "truth_nnz": matrices["truth_csr"]["nnz"],
    }
    fields = {
        "n_nodes": n_final,
        "n_rows": n_final,
        "n_cols": n_final,
        "nnz": f.n_edges,
        "matrices": matrices,
        "arrays": arrays,
        "split": {
            **var.split_params(len(heldout)),
            "rule": "round(heldout_fraction*n_rows) rows with out-degree>=2; history = round(history_fraction*d) clipped to [1,d-1] entries with smallest split_keys",
        },
    }
    return counts, fields


def stage_and_finalize(
    chunks: EdgeChunks,
    n_nodes: int,
    out_dir: str | os.PathLike,
    variant: Variant,
    *,
    node_arrays: Mapping[str, np.ndarray] | None = None,
    n_chunks: int | None = None,
    desc: str = "edges",
    spill: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Edges -> final dataset files in ``out_dir`` (no manifest yet): stage, then filter/split.

    With no filter, self-links kept and no split, the stage is the final dataset
    and is written in place (no second copy of the edges).

    Args:
      chunks, n_chunks, desc, spill: as :func:`~alsx.webgraph.stage.build_stage`.
      node_arrays: extra per-node arrays (length n_nodes) saved as ``NAME.npy``
        and renumbered with the nodes.
    Returns:
      (counts, manifest_fields) as :func:`finalize_graph`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    direct = not variant.needs_finalize
    stage_dir = out_dir if direct else out_dir / "_stage"
    st = build_stage(chunks, n_nodes, stage_dir, variant, n_chunks=n_chunks, desc=desc, spill=spill)
    arrays = {"heldout_rows": "heldout_rows.npy"}
    for name, a in (node_arrays or {}).items():
        np.save(stage_dir / f"{name}.npy", a)
        arrays[name] = f"{name}.npy"
    base_counts = {
        "edges_before_dedupe": st["edges_in"],
        "duplicates_removed": st["edges_in"] - st["edges"],
        "dedup_edges": st["edges"],
    }
    stage_fields = {
        "n_nodes": n_nodes,
        "n_rows": n_nodes,
        "n_cols": n_nodes,
        "nnz": st["edges"],
        "matrices": st["matrices"],
        "arrays": arrays,
    }
    if direct:
        counts, fields = finalize_counts_direct(st, n_nodes, stage_dir, variant.block_nnz), stage_fields
        fields["split"] = {**variant.split_params(0), "heldout_fraction": 0.0}
        return {**base_counts, **counts}, fields
    write_manifest(stage_dir, {**stage_fields, "source": "stage"})
    try:
        counts, fields = finalize_graph(stage_dir, out_dir, variant)
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    return {**base_counts, **counts}, fields


def finalize_counts_direct(st: dict[str, Any], n_nodes: int, root: Path, block_nnz: int) -> dict[str, Any]:
    """Step counts when the stage is the final dataset (no filter, no split)."""
    shards = [open_shard(root, s, n_nodes) for s in st["matrices"]["train_csr"]["shards"]]
    n_self = sum(int((r == c).sum()) for _, _, r, c in iter_blocks(shards, block_nnz))
    return {
        "self_links": n_self,
        "self_links_dropped": 0,
        "degree_filter_iterations": 0,
        "degree_filter_nodes_per_iteration": [],
        "final_nodes": n_nodes,
        "final_edges": st["edges"],
        "heldout_eligible_rows": None,
        "heldout_rows": 0,
        "train_nnz": st["edges"],
        "foldin_nnz": 0,
        "truth_nnz": 0,
    }
