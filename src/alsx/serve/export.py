"""Embedding tables as files other tools read: Parquet (pyarrow) or plain ``.npy``.

Parquet (``alsx export MODEL --to DIR``)::

    DIR/rows.parquet   id: int64 | string      the row's original id (its dense index for an index model)
                       vector: fixed_size_list<float32>[d]
    DIR/cols.parquet   the same for the columns
    DIR/export.json    dim, row and column counts, id kinds, file names

Row ``i`` of each file is dense index ``i`` of the model, so the ``id`` column is the
vocabulary.  By default the vector is one fixed-size-list column (``layout="list"``): one
column per embedding whatever d, read as an array per id by pandas, Spark or DuckDB, and
as the [n, d] block by ``table["vector"].combine_chunks().flatten().to_numpy().reshape(n, d)``.
``layout="columns"`` (``alsx export --layout columns``) writes ``v0 .. v{d-1}`` instead.
Measured on gowalla and cnr-2000 (benchmarks/results_export.md): the same size within 5 %,
writes within 1.4x of each other and reads that went either way between runs, so the list,
the simpler schema, is the default.  Dictionary encoding is
off (unique ids, floats that rarely repeat: it only cost time).  Files are written in row
groups of :data:`ROW_GROUP` rows, so memory stays bounded whatever the table size.

NumPy (``--format npy``)::

    DIR/row_embeddings.npy  float32 [n_rows, d]    DIR/row_ids.npy  int64 or <U [n_rows]
    DIR/col_embeddings.npy  float32 [n_cols, d]    DIR/col_ids.npy  int64 or <U [n_cols]
    DIR/export.json

(no pickles: ``np.load(path, allow_pickle=False)`` reads every file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from alsx.data.vocab import Vocab

ROW_GROUP = 1 << 16  # rows per Parquet row group (and per write)
LAYOUTS = ("list", "columns")  # vector as one fixed-size list column, or one float column per dimension
FORMATS = ("parquet", "npy")


def external_ids(vocab: Vocab | None, n: int) -> np.ndarray:
    """[n] original ids of dense indices 0..n-1: the vocabulary's, or the indices themselves (int64)."""
    return np.arange(n, dtype=np.int64) if vocab is None else vocab.ids


def _batch(ids: np.ndarray, table: np.ndarray, layout: str) -> pa.RecordBatch:
    """One record batch of ``ids`` [b] and ``table`` [b, d] float32."""
    import pyarrow as pa  # here, not at the top: `alsx export --help` reads FORMATS and LAYOUTS only

    id_array = pa.array(ids, type=pa.string() if ids.dtype.kind == "U" else pa.int64())
    flat = np.ascontiguousarray(table, dtype=np.float32)
    if layout == "list":
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        return pa.record_batch([id_array, vectors], names=["id", "vector"])
    names = ["id"] + [f"v{j}" for j in range(flat.shape[1])]
    return pa.record_batch([id_array] + [pa.array(flat[:, j]) for j in range(flat.shape[1])], names=names)


def write_parquet(
    path: str | Path, ids: np.ndarray, table: np.ndarray, layout: str = "list", compression: str = "snappy"
) -> Path:
    """Writes ``ids`` [n] and ``table`` [n, d] as a Parquet file, ``ROW_GROUP`` rows at a time.

    ``layout``: "list" (``id``, ``vector`` fixed_size_list<float32>[d]) or "columns"
    (``id``, ``v0`` ... ``v{d-1}`` float32).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if table.ndim != 2 or len(ids) != table.shape[0]:
        raise ValueError(f"ids [n] and table [n, d] must agree; got {ids.shape} and {table.shape}")
    import pyarrow.parquet as pq

    path = Path(path)
    first = _batch(ids[:0], table[:0], layout)
    # Ids are unique and float vectors rarely repeat: a dictionary only costs time (2x the write).
    with pq.ParquetWriter(path, first.schema, compression=compression, use_dictionary=False) as writer:
        for start in range(0, len(ids), ROW_GROUP):
            stop = start + ROW_GROUP
            writer.write_batch(_batch(ids[start:stop], table[start:stop], layout), row_group_size=ROW_GROUP)
    return path


def read_parquet(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n], table float32 [n, d]) of a file written by :func:`write_parquet` (either layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    ids = t["id"].to_numpy()
    ids = ids.astype(str) if pa.types.is_string(t.schema.field("id").type) else ids.astype(np.int64)
    if "vector" in t.column_names:
        col = t["vector"].combine_chunks()
        d = col.type.list_size
        table = col.flatten().to_numpy().reshape(len(t), d)
    else:
        table = np.stack([t[name].to_numpy() for name in t.column_names if name != "id"], axis=1)
    return ids, np.ascontiguousarray(table, dtype=np.float32)


def export_model(model, out: str | Path, fmt: str = "parquet", layout: str = "list") -> dict:
    """Writes a fitted :class:`alsx.ALS`'s tables and ids into folder ``out``; returns export.json's content.

    ``fmt``: "parquet" (rows.parquet, cols.parquet) or "npy" (``*_embeddings.npy`` + ``*_ids.npy``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = {}
    for side, table, vocab in (
        ("rows", model.row_embeddings_, model.row_vocab_),
        ("cols", model.col_embeddings_, model.col_vocab_),
    ):
        ids = external_ids(vocab, table.shape[0])
        if fmt == "parquet":
            files[side] = write_parquet(out / f"{side}.parquet", ids, table, layout).name
        else:
            stem = side[:-1]
            np.save(out / f"{stem}_embeddings.npy", np.asarray(table, dtype=np.float32))
            np.save(out / f"{stem}_ids.npy", ids)
            files[side] = [f"{stem}_embeddings.npy", f"{stem}_ids.npy"]
    info = {
        "format": fmt,
        "layout": layout if fmt == "parquet" else None,
        "dim": int(model.row_embeddings_.shape[1]),
        "n_rows": int(model.row_embeddings_.shape[0]),
        "n_cols": int(model.col_embeddings_.shape[0]),
        "row_ids": "index" if model.row_vocab_ is None else model.row_vocab_.kind,
        "col_ids": "index" if model.col_vocab_ is None else model.col_vocab_.kind,
        "files": files,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out / "export.json").write_text(json.dumps(info, indent=2))
    return info
