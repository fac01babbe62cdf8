"""Common Crawl link lists -> WebGraph benchmark variants (locality, density, held-out rows).

The pipeline, as in ALX (arXiv 2112.02194, section on WebGraph), one module per stage:

1. **read** (:mod:`alsx.webgraph.inputs`): stream the input (Common Crawl
   ``vertices``/``edges`` files, or a plain ``src dst`` edge list of integer ids or
   URLs) in chunks with ``pyarrow.csv.open_csv``; keep nodes whose TLD is in ``tld``
   (:mod:`alsx.webgraph.vocabulary`) and edges whose two ends are kept; spill the kept
   edges to a temporary int64 file.
2. **stage** (:mod:`alsx.webgraph.stage`): build the deduplicated graph on disk (CSR
   and its transpose) with the external counting sort of
   :class:`~alsx.webgraph.csr_writers.ExternalCSRBuilder`.
3. **finalize** (:mod:`alsx.webgraph.finalize`): self-link policy, degree filter (every
   kept node needs >= K in-links and >= K out-links; one pass like ALX, or iterated to
   a fixed point), dense renumbering, held-out rows split into history (folded in) and
   truth (:mod:`alsx.webgraph.heldout`), written as the final dataset.

What is filtered, split and how it is written is one :class:`~alsx.webgraph.variant.Variant`.
Memory is O(number of nodes) plus one chunk; edges only ever live on disk.
The held-out split is a pure function of (seed, final node ids) so the result
does not depend on chunk sizes, and the Spark job reproduces it exactly.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alsx.webgraph.dataset import WebGraphDataset, open_dataset, write_manifest
from alsx.webgraph.finalize import stage_and_finalize
from alsx.webgraph.heldout import history_counts, select_heldout, split_keys
from alsx.webgraph.inputs import CCInputs, describe_inputs, ingest_inputs, spill_chunks, write_node_names
from alsx.webgraph.variant import DEFAULT_CHUNK_EDGES, DEFAULT_FILL_BUDGET_NNZ, Variant, prepare_out, variant_of
from alsx.webgraph.vocabulary import normalize_tlds

__all__ = [
    "CCInputs",
    "DEFAULT_CHUNK_EDGES",
    "DEFAULT_FILL_BUDGET_NNZ",
    "Variant",
    "build_webgraph",
    "history_counts",
    "select_heldout",
    "split_keys",
    "stage_and_finalize",
]


def build_webgraph(
    inputs: CCInputs | Mapping[str, Any] | str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    variant: Variant | None = None,
    tld: str | Sequence[str] | None = None,
    chunk_edges: int = DEFAULT_CHUNK_EDGES,
    checksum: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> WebGraphDataset:
    """Builds one WebGraph variant (e.g. ``tld='de', min_degree=50``) as an on-disk dataset.

    Args:
      inputs: :class:`CCInputs` (or a dict with ``vertices`` and ``edges``) for
        Common Crawl's format; otherwise path(s)/glob(s) of a plain ``src dst``
        edge list of integer ids or URLs (whitespace- or tab-separated, ``#``
        comment lines at the top allowed, ``.gz`` read transparently).
      out_dir: dataset directory (must be empty or absent unless ``overwrite``).
      variant: the filter, split and file layout (:class:`~alsx.webgraph.variant.Variant`;
        default ``Variant()``); ``options`` replace its fields by name (``min_degree=50``).
      tld: keep only nodes whose TLD is listed (e.g. ``'de'`` or ``['de', 'in']``);
        an edge needs both ends kept.
      chunk_edges: edges per processing chunk (bounds memory).
      checksum: record sha256 of every file in the manifest.
    Returns:
      The opened dataset.
    """
    t0 = time.time()
    var = variant_of(variant, options, "build_webgraph")
    out_dir = Path(out_dir)
    prepare_out(out_dir, overwrite)
    tlds = normalize_tlds(tld)
    tmp = out_dir / "_ingest"
    tmp.mkdir()
    try:
        ing = ingest_inputs(inputs, tmp, tlds, block_size=1 << 24, progress=var.progress)
        node_arrays: dict[str, np.ndarray] = {"node_ids": ing.node_ids}
        n_chunks = -(-ing.n_spilled // chunk_edges)
        counts, fields = stage_and_finalize(
            spill_chunks(ing, chunk_edges),
            len(ing.node_ids),
            out_dir,
            var,
            node_arrays=node_arrays,
            n_chunks=n_chunks,
            desc="stage",
            spill=False,  # the ingest spill is already on disk: replay it
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ing.names is not None:
        write_node_names(out_dir, ing.names, fields)
    params = {
        "inputs": describe_inputs(inputs),
        "input_mode": ing.mode,
        "tld": tlds,
        **var.filter_params(),
        "seed": var.seed,
        "chunk_edges": chunk_edges,
        "max_shard_nnz": var.max_shard_nnz,
    }
    all_counts = {**ing.counts, **counts}
    write_manifest(
        out_dir,
        {**fields, "source": "build", "params": params, "counts": all_counts, "seconds": round(time.time() - t0, 3)},
        checksum=checksum,
    )
    return open_dataset(out_dir)
