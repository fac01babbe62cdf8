"""Approximate top-k over a column table: an inner-product faiss index (the ``ann`` extra).

``alsx export MODEL --ann faiss --to DIR`` writes::

    DIR/columns.faiss   the index (faiss.write_index), column j of the model stored as id j
    DIR/ann.json        library, index kind and settings, dim, n_cols, SHA-256 of the column table

and ``alsx recommend MODEL --ann DIR`` searches it.  The index is HNSW over the inner
product (``IndexHNSWFlat``, METRIC_INNER_PRODUCT), chosen by measurement against faiss
IVF, hnswlib and usearch (benchmarks/results_ann.md).  Seen columns are excluded by
over-fetching: a row with ``s`` seen columns asks for ``k + s`` (rows grouped in
power-of-two buckets of that size, so a batch is a few calls), then drops them, so
every row still gets k columns whenever the index returns enough.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from alsx.data.matrix import CSR
from alsx.errors import ModelError, UsageError

INDEX_FILE = "columns.faiss"
META_FILE = "ann.json"
LIBRARIES = ("faiss",)
PAD_ID = -1


@dataclasses.dataclass(frozen=True)
class AnnSettings:
    """HNSW graph degree ``m``, build beam ``ef_construction`` and search beam ``ef_search``."""

    m: int = 32
    ef_construction: int = 128
    ef_search: int = 256  # tie-aware recall@10 0.96 on cnr-2000 at d=64 (128: 0.95), benchmarks/results_ann.md


@dataclasses.dataclass
class AnnIndex:
    index: object  # faiss.Index
    meta: dict


def faiss_module():
    """faiss, or a UsageError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise UsageError("--ann faiss needs faiss: pip install 'alsx[ann]' (or pip install faiss-cpu)") from None
    return faiss


def table_digest(table: np.ndarray) -> str:
    """SHA-256 of a float32 [m, d] table, so an index is never searched with another model's rows."""
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.float32).tobytes()).hexdigest()


def build_index(table: np.ndarray, settings: AnnSettings = AnnSettings()) -> AnnIndex:
    """An inner-product HNSW index of ``table`` float32 [m, d]; item j is column j."""
    faiss = faiss_module()
    table = np.ascontiguousarray(table, dtype=np.float32)
    index = faiss.IndexHNSWFlat(table.shape[1], settings.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    index.hnsw.efSearch = settings.ef_search
    index.add(table)
    meta = {
        "library": "faiss",
        "kind": "IndexHNSWFlat",
        "metric": "inner_product",
        **dataclasses.asdict(settings),
        "dim": int(table.shape[1]),
        "n_cols": int(table.shape[0]),
        "col_table_sha256": table_digest(table),
    }
    return AnnIndex(index, meta)


def save_index(ann: AnnIndex, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faiss_module().write_index(ann.index, str(folder / INDEX_FILE))
    (folder / META_FILE).write_text(json.dumps(ann.meta, indent=2))
    return folder


def load_index(folder: str | Path, table: np.ndarray, ef_search: int | None = None) -> AnnIndex:
    """Reads an index written by :func:`save_index`, checked against the model's column ``table``.

    Raises:
      UsageError: the folder holds no index, or one built from another column table.
    """
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / INDEX_FILE).is_file():
        raise UsageError(
            f"--ann {folder}: no ANN index there ({META_FILE} and {INDEX_FILE}); write one with "
            f"'alsx export MODEL --ann faiss --to {folder}'"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except ValueError as e:
        raise ModelError(f"{folder / META_FILE}: not valid JSON ({e})") from None
    if meta.get("col_table_sha256") != table_digest(table):
        raise UsageError(
            f"--ann {folder}: the index was built from another model's column table "
            f"({meta.get('n_cols')} x {meta.get('dim')}); rebuild it with 'alsx export MODEL --ann faiss'"
        )
    index = faiss_module().read_index(str(folder / INDEX_FILE))
    if ef_search is not None:
        index.hnsw.efSearch = ef_search
        meta = {**meta, "ef_search": ef_search}
    return AnnIndex(index, meta)


def search(ann: AnnIndex, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [n, k] inner products descending, ids int32 [n, k]; -inf / -1 where none)."""
    scores, ids = ann.index.search(np.ascontiguousarray(query, dtype=np.float32), k)
    ids = ids.astype(np.int32)
    return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids


def search_excluding(
    ann: AnnIndex, query: np.ndarray, k: int, exclude: CSR | None, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each ``query`` [n, d] from the index, leaving out row ``rows[i]`` of ``exclude``.

    Rows are grouped by ``next_pow2(k + seen)`` (capped at the column count), each group
    searched once for that many, the seen columns dropped and the best k kept.
    Returns scores float32 [n, k] and ids int32 [n, k], ``-inf`` / ``-1`` padded.
    """
    n, m = len(query), int(ann.meta["n_cols"])
    if exclude is None:
        return search(ann, query, k)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), PAD_ID, np.int32)
    seen = (exclude.indptr[rows + 1] - exclude.indptr[rows]).astype(np.int64)
    fetch = np.minimum(1 << np.ceil(np.log2(np.maximum(k + seen, 1))).astype(np.int64), m)
    for size in np.unique(fetch):
        group = np.flatnonzero(fetch == size)
        scores, ids = search(ann, query[group], int(size))
        for g, s, i in zip(group, scores, ids):
            r = rows[g]
            drop = np.isin(i, exclude.indices[exclude.indptr[r] : exclude.indptr[r + 1]]) | (i < 0)
            keep_s, keep_i = s[~drop][:k], i[~drop][:k]
            out_s[g, : len(keep_s)], out_i[g, : len(keep_i)] = keep_s, keep_i
    return out_s, out_i
