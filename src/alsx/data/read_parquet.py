"""Readers of tables with named columns: a pandas DataFrame and a Parquet file (whole, or a run of row groups)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alsx.data.columns import columns_note, read_columns, resolve_names
from alsx.data.raw import Raw, fail, index_locator


def read_frame(df: Any, refs: dict) -> Raw:
    source = "DataFrame"
    names = [str(c) for c in df.columns]
    # Integer refs are labels when the frame has such a column label, else positions.
    refs = dict(refs)
    for role, ref in refs.items():
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool) and ref in list(df.columns):
            refs[role] = str(ref)
    pos = resolve_names(names, refs, source, {"row": 0, "col": 1})
    cols: dict[str, Any] = {}
    for role, p in pos.items():
        s = df.iloc[:, p]
        # Plain NumPy dtypes convert without copies; extension / object / category go via arrow.
        if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iufbM":
            cols[role] = s.to_numpy()
        else:
            try:
                cols[role] = pa.chunked_array([pa.Array.from_pandas(s)])
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise fail(source, None, f"column {names[p]!r} mixes types ({e})") from None
    labels = {role: f"column {names[p]!r}" for role, p in pos.items()}
    raw = read_columns(cols, source, labels, index_locator("row"))
    raw.columns = columns_note(labels)
    return raw


def read_parquet(path: str, refs: dict, part: tuple[int, int] | None = None) -> Raw:
    """The whole file, or with ``part`` = (i, n) the i-th of n contiguous runs of its row groups."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise fail(path, None, f"not a readable Parquet file ({e})") from None
    names = list(pf.schema_arrow.names)
    pos = resolve_names(names, refs, path, {"row": 0, "col": 1})
    columns = [names[p] for p in dict.fromkeys(pos.values())]
    if part is None:
        table, first_row = pf.read(columns=columns), 0
    else:
        groups = pf.metadata.num_row_groups
        lo, hi = groups * part[0] // part[1], groups * (part[0] + 1) // part[1]
        table = pf.read_row_groups(list(range(lo, hi)), columns=columns)
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(lo))  # from the footer only
    cols = {role: table.column(names[p]) for role, p in pos.items()}
    labels = {role: f"column {names[p]!r}" for role, p in pos.items()}
    raw = read_columns(cols, path, labels, index_locator("row", first_row))
    raw.columns = columns_note(labels)
    return raw
