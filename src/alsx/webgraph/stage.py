"""The stage and filter steps of a WebGraph build: unordered edges -> deduplicated CSR + CSC on disk -> kept nodes.

:func:`build_stage` writes the graph of any edge chunks with the external counting sort
of :class:`~alsx.webgraph.csr_writers.ExternalCSRBuilder` (memory O(nodes) plus one
chunk); :func:`degree_filter` applies the self-link policy and the degree filter on it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext as _nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from alsx.webgraph.dataset import ExternalCSRBuilder, SequentialCSRWriter, Shard, WebGraphDataset, csr_blocks
from alsx.webgraph.variant import EdgeChunks, Variant, progress_bar


def build_stage(
    chunks: EdgeChunks,
    n_nodes: int,
    stage_dir: str | os.PathLike,
    variant: Variant,
    *,
    n_chunks: int | None = None,
    desc: str = "edges",
    spill: bool = True,
) -> dict[str, Any]:
    """Writes the deduplicated graph of ``chunks`` as CSR + CSC (no split) under ``stage_dir``.

    Args:
      chunks: a callable returning a fresh iterable of (src, dst) int [m] chunks;
        it is iterated for counting, then (unless ``spill``) once per fill
        bucket, and must yield the same edges every time.
      n_nodes: node count; ids are in [0, n_nodes).
      variant: its ``max_shard_nnz``, ``block_nnz``, ``progress`` and ``fill_budget_nnz``
        (entries per in-RAM row bucket, 4 bytes each, per orientation; the edges are
        read once per bucket) apply.
      spill: during the count pass, also write the chunks to a temporary file
        (8 bytes per edge) and fill from it, instead of iterating ``chunks`` again.
    Returns:
      The ``matrices`` manifest entries plus ``edges_in`` (before dedupe) and ``edges`` (after).
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    v = variant
    csr = ExternalCSRBuilder(
        stage_dir / "train_csr", n_nodes, n_nodes, max_shard_nnz=v.max_shard_nnz, block_nnz=v.block_nnz
    )
    csc = ExternalCSRBuilder(
        stage_dir / "train_csc", n_nodes, n_nodes, max_shard_nnz=v.max_shard_nnz, block_nnz=v.block_nnz
    )
    spill_path = stage_dir / "_chunks.bin"
    lengths: list[int] = []
    with open(spill_path, "wb") if spill else _nullcontext() as f:
        for src, dst in progress_bar(
            v.progress, iterable=chunks(), total=n_chunks, desc=f"{desc}: count", unit="chunk"
        ):
            csr.count(src)
            csc.count(dst)
            if f is not None:  # int32 (src, dst) pairs: reading back is cheaper than regenerating
                pair = np.empty((len(src), 2), dtype=np.int32)
                pair[:, 0] = src
                pair[:, 1] = dst
                f.write(memoryview(pair.reshape(-1)).cast("B"))
                lengths.append(len(src))
    csr.allocate()
    csc.allocate()

    def replay() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with open(spill_path, "rb") as f:
            for m in lengths:
                pair = np.fromfile(f, dtype=np.int32, count=2 * m).reshape(-1, 2)
                yield pair[:, 0], pair[:, 1]

    source = replay if spill else chunks
    # Row buckets that fit ``fill_budget_nnz`` are built in RAM, one pass over the
    # edges per bucket pair, and written sequentially (see ExternalCSRBuilder.fill_bucket).
    plan_r, plan_c = csr.bucket_plan(v.fill_budget_nnz), csc.bucket_plan(v.fill_budget_nnz)
    try:
        for i in progress_bar(
            v.progress, iterable=range(max(len(plan_r), len(plan_c))), desc=f"{desc}: fill", unit="bucket"
        ):
            if i < len(plan_r):
                csr.fill_bucket(plan_r[i], source())
            if i < len(plan_c):
                csc.fill_bucket(plan_c[i], ((d, s) for s, d in source()))
    finally:
        if spill:
            spill_path.unlink()
    m_csr = csr.finalize_buckets()
    m_csc = csc.finalize_buckets()
    if m_csr["nnz"] != m_csc["nnz"]:  # pragma: no cover - a bug guard
        raise RuntimeError(f"CSR has {m_csr['nnz']} entries but its transpose {m_csc['nnz']}")
    empty = {}
    for name in ("foldin_csr", "truth_csr"):
        empty[name] = SequentialCSRWriter(stage_dir / name, n_nodes).close()
    np.save(stage_dir / "heldout_rows.npy", np.zeros(0, dtype=np.int32))
    return {
        "matrices": {"train_csr": m_csr, "train_csc": m_csc, **empty},
        "edges_in": m_csr["nnz_before_dedupe"],
        "edges": m_csr["nnz"],
    }


def iter_blocks(shards: Sequence[Shard], block_nnz: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Streams a sharded CSR in row blocks.

    Yields:
      (g0, g1, rows, cols): global row range [g0, g1), rows int64 [m] global row
      of each entry, cols int32 [m].
    """
    for sh in shards:
        yield from csr_blocks(sh.csr, block_nnz, sh.row_start)


def _lengths(shards: Sequence[Shard]) -> np.ndarray:
    return np.concatenate([np.diff(np.asarray(s.csr.indptr)) for s in shards]).astype(np.int64)


def _induced_degrees(
    shards: Sequence[Shard], keep: np.ndarray, drop_self: bool, block_nnz: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Out/in-degrees (int64 [n]) and edge count of the subgraph induced by ``keep``."""
    n = len(keep)
    out = np.zeros(n, dtype=np.int64)
    inn = np.zeros(n, dtype=np.int64)
    for g0, g1, r, c in iter_blocks(shards, block_nnz):
        m = keep[r] & keep[c]
        if drop_self:
            m &= r != c
        out[g0:g1] += np.bincount(r[m] - g0, minlength=g1 - g0)
        inn += np.bincount(c[m], minlength=n)
    return out, inn, int(out.sum())


@dataclasses.dataclass(frozen=True)
class FilterResult:
    """What the self-link policy and degree filter decided, on stage node ids.

    Attributes:
      keep: bool [n_stage] nodes kept.
      out_degree, in_degree: int64 [n_stage] degrees in the kept subgraph (0 where dropped).
      n_edges: edges of the kept subgraph.
      self_links: self-links in the stage graph.
      iterations: degree-filter passes run (0 without a filter).
      nodes_per_iteration: kept node count after each pass.
    """

    keep: np.ndarray
    out_degree: np.ndarray
    in_degree: np.ndarray
    n_edges: int
    self_links: int
    iterations: int
    nodes_per_iteration: list[int]


def degree_filter(stage: WebGraphDataset, variant: Variant) -> FilterResult:
    """Self-link policy + the in/out-degree >= K filter on a stage graph.

    One pass (ALX): degrees are computed once on the graph, nodes with both
    degrees >= K are kept, and the edges between kept nodes remain, so some kept
    nodes end up below K. ``fixed_point=True`` repeats until no node is removed.
    Dropped self-links do not count towards degrees.  Uses ``variant``'s ``min_degree``,
    ``fixed_point``, ``keep_self_links`` and ``block_nnz``.
    """
    min_degree, block_nnz = variant.min_degree, variant.block_nnz
    csr, csc = stage.shards("train_csr"), stage.shards("train_csc")
    n = stage.n_nodes
    out_len, in_len = _lengths(csr), _lengths(csc)
    has_self = np.zeros(n, dtype=bool)  # [n] node has a self-link (stage is deduplicated: at most one)
    for _, _, r, c in iter_blocks(csr, block_nnz):
        has_self[r[r == c]] = True
    n_self = int(has_self.sum())
    drop = not variant.keep_self_links
    out0 = out_len - has_self if drop else out_len
    in0 = in_len - has_self if drop else in_len
    if min_degree <= 0:
        keep = np.ones(n, dtype=bool)
        return FilterResult(keep, out0, in0, int(out0.sum()), n_self, 0, [])
    keep = (out0 >= min_degree) & (in0 >= min_degree)
    history = [int(keep.sum())]
    while True:
        out, inn, m = _induced_degrees(csr, keep, drop, block_nnz)
        if not variant.fixed_point:
            break
        new = keep & (out >= min_degree) & (inn >= min_degree)
        if new.sum() == keep.sum():
            break
        keep = new
        history.append(int(keep.sum()))
    return FilterResult(keep, out, inn, m, n_self, len(history), history)
