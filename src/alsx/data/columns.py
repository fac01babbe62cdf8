"""Column checks shared by every reader: ids, values, timestamps and flags by role, and which column is which.

Each check takes one column (NumPy or Arrow) as read, with its label for messages
("column 'user'", "array 'rows'") and a :data:`~alsx.data.raw.Location` naming an
entry's line or row, and returns it in the dtype validation expects, or raises an
:class:`~alsx.data.raw.IngestError` naming the entry.  :func:`resolve_names` maps the
``--row`` / ``--col`` / ... arguments to column positions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alsx.data.raw import INT32_MAX, IdColumn, Location, Raw, fail, first_index
from alsx.data.vocab import as_id_array
from alsx.errors import UsageError


def np_ids(arr: np.ndarray, label: str, source: str, locate: Location) -> IdColumn:
    """Integer ids stay numeric (int32 if they fit); strings stay strings; bool/fractions fail."""
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise fail(source, None, f"{label} must be one-dimensional, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        raise fail(source, None, f"{label} has dtype bool; expected integer indices or string ids")
    if kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.floor(arr[~bad])
        if bad.any():
            i = first_index(bad)
            raise fail(source, locate([i])[0], f"non-integer id {arr[i].item()!r} in {label} (dtype {arr.dtype})")
        arr = arr.astype(np.int64)
    elif kind == "O":
        try:
            typed = pa.array(arr, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise fail(source, None, f"{label} mixes id types ({e}); use all int or all str") from None
        return arrow_ids(pa.chunked_array([typed]), label, source, locate)
    elif kind not in "iuUS":
        raise fail(source, None, f"{label} has unsupported dtype {arr.dtype}")
    if kind in "US":
        return as_id_array(arr, what=label)
    return narrow(arr)


def narrow(arr: np.ndarray) -> np.ndarray:
    """int32 when every value fits (halves memory for the usual case), else int64."""
    if arr.dtype == np.int32:
        return arr
    if arr.size and arr.min() >= 0 and arr.max() <= INT32_MAX:
        return arr.astype(np.int32)
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        return arr  # left unsigned: the range check in finish names the value
    return arr.astype(np.int64, copy=False)


def _arrow_plain(col: pa.ChunkedArray, label: str, source: str, locate: Location) -> pa.ChunkedArray:
    """Decodes dictionaries and rejects nulls (missing values are never skipped silently)."""
    if pa.types.is_dictionary(col.type):
        col = pa.chunked_array([c.dictionary_decode() for c in col.chunks], type=col.type.value_type)
    if col.null_count:
        i = first_index(col.is_null().to_numpy(zero_copy_only=False))
        raise fail(source, locate([i])[0], f"missing value in {label}")
    return col


def arrow_ids(col: pa.ChunkedArray, label: str, source: str, locate: Location) -> IdColumn:
    col = _arrow_plain(col, label, source, locate)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return col.cast(pa.large_string()) if pa.types.is_string_view(t) else col
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np_ids(col.to_numpy(), label, source, locate)
    raise fail(source, None, f"{label} has unsupported type {t}; expected integers or strings")


def np_values(arr: np.ndarray, label: str, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "iufb":
        raise fail(source, None, f"{label} must be a 1-D numeric array, got dtype {arr.dtype}, shape {arr.shape}")
    if arr.dtype == np.float32:
        return arr  # already the output dtype: no float64 copy of a large column
    return arr.astype(np.float64, copy=False)


def np_timestamps(arr: np.ndarray, label: str, source: str, locate: Location) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "M":  # datetime64 -> Unix seconds
        return arr.astype("datetime64[s]").astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise fail(source, None, f"{label} must be 1-D integer Unix times, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.floor(arr[~bad])
        if bad.any():
            i = first_index(bad)
            raise fail(source, locate([i])[0], f"non-integer timestamp {arr[i].item()!r} in {label}")
    return arr.astype(np.int64, copy=False)


def np_bool(arr: np.ndarray, label: str, source: str, locate: Location) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind in "iu":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            i = first_index(bad)
            raise fail(source, locate([i])[0], f"{label} must be 0/1 or bool, got {arr[i].item()!r}")
        return arr.astype(bool)
    raise fail(source, None, f"{label} must be bool, got dtype {arr.dtype}")


def _arrow_numeric(col: pa.ChunkedArray, role: str, label: str, source: str, locate: Location) -> np.ndarray:
    col = _arrow_plain(col, label, source, locate)
    if role == "timestamp" and pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("s", tz=col.type.tz), safe=False)
        return col.cast(pa.int64()).to_numpy()
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise fail(source, None, f"{label} has type {col.type}; expected numbers")
    arr = col.to_numpy()
    if role == "value":
        return np_values(arr, label, source)
    if role == "timestamp":
        return np_timestamps(arr, label, source, locate)
    return np_bool(arr, label, source, locate)


FLAGS = {"row": "--row", "col": "--col", "value": "--value", "timestamp": "--timestamp", "is_test": "is_test="}


def resolve_names(
    names: list[str], refs: dict, source: str, defaults: dict, *, where: str | None = None, described: str | None = None
) -> dict[str, int]:
    """Role -> column position, from a name or a 0-based number, or a default position.

    A default applies only when it leaves no column without a role and takes no column
    given another role (see ``load_interactions``); otherwise it is an error.

    Args:
      where: the line the names come from ("line 1 ('a,b')"), for messages.
      described: how to list the columns in messages (default: the names).
    """
    described = described if described is not None else f"the columns are {names}"
    frame = source == "DataFrame"  # only a library call: name its arguments, not the CLI's flags
    flags = {r: (f"{r}=" if frame else f) for r, f in FLAGS.items()}
    out = {}
    for role in ("row", "col", "value", "timestamp", "is_test"):
        ref = refs[role] if refs[role] is not None else defaults.get(role)
        if ref is None:
            continue
        flag = flags[role]
        if isinstance(ref, str):
            hits = [i for i, n in enumerate(names) if n == ref]
            if not hits:
                raise fail(source, where, f"no column {ref!r} for {flag}; {described}")
            if len(hits) > 1:
                raise fail(
                    source,
                    where,
                    f"column name {ref!r} ({flag}) appears {len(hits)} times; give it by "
                    f"0-based number instead ({flag} {hits[0]})",
                )
            out[role] = hits[0]
        elif isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            if not 0 <= ref < len(names):
                raise fail(source, where, f"no column {ref} for {flag} (0-based); {described}")
            out[role] = int(ref)
        else:
            raise UsageError(f"{flag} must be a column name or number, got {ref!r}")
    defaulted = [r for r in defaults if refs[r] is None and r in out]
    if defaulted:
        given = {out[r]: r for r in out if refs[r] is not None}
        for r in defaulted:
            if out[r] in given:
                raise fail(
                    source,
                    where,
                    (
                        f"{flags[r]} defaults to column {out[r]}, which is already the {given[out[r]]} column "
                        f"({flags[given[out[r]]]}); {described}: pass {flags['row']} and {flags['col']}"
                    ),
                )
        unused = [i for i in range(len(names)) if i not in set(out.values())]
        if unused:
            show = lambda i: repr(names[i]) if names[i] != str(i) else str(i)  # noqa: E731
            taken = ", ".join(
                f"{flags[r]}{'' if frame else ' '}{out[r]}"
                + (f" ({names[out[r]]!r})" if names[out[r]] != str(out[r]) else "")
                for r in defaulted
            )
            fix = (
                "pass --row and --col (a header name or 0-based number), and --value / --timestamp for a column to use"
                if source != "DataFrame"
                else "pass row= and col= (and value= ...) to load_interactions, "
                "or select the id columns first (df[['user', 'item']])"
            )
            raise fail(
                source,
                where,
                (
                    f"which columns hold the row and column ids? {described}; the defaults ({taken}) apply only when "
                    f"every column has a role, and would leave column(s) {', '.join(show(i) for i in unused)} unused: "
                    + fix
                ),
            )
    return out


def columns_note(labels: dict[str, str], header: str | None = None) -> str:
    """What was read from where, for the summary: "row = column 'user', col = column 'item' (header line 1)"."""
    text = ", ".join(
        f"{role} = {labels[role]}" for role in ("row", "col", "value", "timestamp", "is_test") if role in labels
    )
    return text + (f" ({header})" if header else "")


def read_columns(cols: dict[str, pa.ChunkedArray | np.ndarray], source: str, labels: dict, locate: Location) -> Raw:
    """Shared tail of DataFrame / Parquet: arrow or numpy columns by role -> Raw."""

    def ids(role: str) -> IdColumn:
        c = cols[role]
        if isinstance(c, np.ndarray):
            return np_ids(c, labels[role], source, locate)
        return arrow_ids(c, labels[role], source, locate)

    def numeric(role: str) -> np.ndarray | None:
        c = cols.get(role)
        if c is None:
            return None
        if not isinstance(c, np.ndarray):
            return _arrow_numeric(c, role, labels[role], source, locate)
        if role == "value":
            return np_values(c, labels[role], source)
        if role == "timestamp":
            return np_timestamps(c, labels[role], source, locate)
        return np_bool(c, labels[role], source, locate)

    return Raw.by_role(source, lambda role: ids(role) if role in ("row", "col") else numeric(role), labels, locate)
