"""One input file, many processes: each parses only its part, then entries go to their owners.

A multi-process ``alsx train FILE`` never has a process parse the whole file.  Process i of n:

1. reads part i (text: the whole lines starting in the i-th n-th of the bytes; Parquet:
   the i-th run of row groups; npz: the i-th slice of the entry arrays), checking values
   where they were read, so an error still names the file and the line;
2. agrees with the others on what the ids are: the id type of text columns, then either
   the vocabulary (the sorted union of every part's distinct ids, exactly what one process
   reading everything builds; only distinct ids travel) or, for indices, the shape;
3. sends each entry to the process owning its row (contiguous row ranges balanced by
   entries) with an all-to-all (:func:`alsx.distributed.route`); the owner sorts and
   merges duplicates, across parts too ('first' keeps the earliest in file order).

What comes out is a :class:`Partitioned`: this process's complete rows plus global counts.
Splits are row-local (``split_partitioned``), so each process splits its own rows exactly as
one process splitting the whole matrix would; ``engine_inputs`` then routes the training
entries to the ShardedEngine's row and column owners.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alsx import distributed as dist
from alsx.data import guards
from alsx.data.dedupe import pair_namer, sort_dedupe
from alsx.data.ingest import ingest_arguments, read_source, suffix_format
from alsx.data.layout import engine_layouts, group_ranges, shard_processes
from alsx.data.matrix import CSR, Interactions, coo_to_csr
from alsx.data.raw import IdColumn, IngestSummary, fail, is_str
from alsx.data.split import by_name
from alsx.data.validate import (
    as_large_strings,
    checked_values,
    distinct_strings,
    encode_ids,
    mixed_ids_error,
    string_codes,
)
from alsx.data.vocab import Vocab

log = logging.getLogger(__name__)

_PART_SHIFT = 40  # order key = part << 40 | entry index within the part (file order)


@dataclasses.dataclass(frozen=True)
class Partitioned:
    """This process's share of an input read by all processes.

    Attributes:
      local: every entry of the rows in ``row_range`` (global ids and shape, sorted, unique).
      row_range: [lo, hi) rows this process holds.
      row_counts, col_counts: int64 [n_rows], [n_cols] entries per row / column over all processes.
      summary: IngestSummary totals over all processes.
    """

    local: Interactions
    row_range: tuple[int, int]
    row_counts: np.ndarray
    col_counts: np.ndarray
    summary: IngestSummary


# ---------------------------------------------------------------------------- id agreement
def _gather_strings(values: pa.Array) -> pa.Array:
    """The union of every process's distinct strings (offsets and bytes travel, nothing pickled)."""
    values = values.cast(pa.large_string())
    if len(values) == 0:
        values = pa.array([], pa.large_string())
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], np.uint8) if values.buffers()[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    parts = []
    for ln, by in zip(dist.allgather_bytes(lengths), dist.allgather_bytes(data)):
        off = np.concatenate([[0], np.cumsum(ln)]).astype(np.int64)
        parts.append(pa.LargeStringArray.from_buffers(len(ln), pa.py_buffer(off.tobytes()), pa.py_buffer(by.tobytes())))
    return pa.concat_arrays(parts)


def _global_vocab(cols: list[IdColumn]) -> tuple[Vocab, list[np.ndarray]]:
    """The vocabulary over all processes' ``cols`` (same on every process) and this part's codes."""
    if _any_process(any(is_str(c) for c in cols)):  # a collective: every process asks
        arrs = [as_large_strings(c) for c in cols]
        uniq = np.sort(pc.unique(_gather_strings(distinct_strings(arrs))).to_numpy(zero_copy_only=False).astype(str))
        return string_codes(uniq, arrs)
    mine = np.unique(np.concatenate([np.asarray(c, np.int64) for c in cols]))
    uniq = np.unique(np.concatenate(dist.allgather_bytes(mine)))
    if uniq.size and np.abs(uniq).max() <= np.iinfo(np.int32).max:
        uniq = uniq.astype(np.int32)
    return Vocab.from_sorted_unique(uniq), [np.searchsorted(uniq, np.asarray(c)).astype(np.int32) for c in cols]


def _check_mixed_ids(raw) -> None:
    """The ``--ids auto`` rule (``alsx.data.guards.mixed_int_ids``) over every process's part of a text column.

    A collective: every process calls it with the same roles; a process holding a non-integer
    token names its line, the others say the token is in another part.
    """
    for role in ("row", "col"):
        if not _any_process(role in raw.inferred_str):
            continue
        col = raw.rows if role == "row" else raw.cols
        n_int, n, first = guards.mixed_int_ids(col) if is_str(col) else (len(col), len(col), -1)
        n_int_all, n_all = (int(v) for v in dist.allreduce_sum(np.array([n_int, n], np.int64)))
        if guards.is_mixed(n_int_all, n_all):
            raise mixed_ids_error(raw, role, n_int_all, n_all, first)


def _any_process(flag: bool) -> bool:
    return bool(dist.allreduce_sum(np.array([int(flag)]))[0])


def _global_max(x: np.ndarray) -> int:
    """max over every process's ``x`` (-1 where all are empty)."""
    return int(max(int(v[0]) for v in dist.allgather_bytes(np.array([x.max() if x.size else -1], np.int64))))


# ---------------------------------------------------------------------------- payload
def pack_fields(fields: list[np.ndarray]) -> np.ndarray:
    """int32 [n, F]: each field's 4-byte words side by side (int64 as two words)."""
    cols = [np.ascontiguousarray(f).view(np.int32).reshape(len(f), max(1, f.dtype.itemsize // 4)) for f in fields]
    return np.concatenate(cols, axis=1) if cols else np.zeros((0, 0), np.int32)


def unpack_fields(payload: np.ndarray, dtypes: list[np.dtype]) -> list[np.ndarray]:
    out, at = [], 0
    for dt in dtypes:
        words = max(1, np.dtype(dt).itemsize // 4)
        out.append(np.ascontiguousarray(payload[:, at : at + words]).view(dt).reshape(-1))
        at += words
    return out


# ---------------------------------------------------------------------------- load
def load_partitioned(path: str, **options: Any) -> Partitioned:
    """``load_interactions`` with every process of a ``jax.distributed`` run reading one part.

    Same arguments, same validation, same result as one process reading the whole file
    (vocabulary, shape, merged duplicates, counts); every process must call it.  With one
    process it reads the whole file.

    Args:
      options: the keyword arguments of ``load_interactions`` (``fmt``, ``row``, ..., ``keep_zeros``).

    Raises:
      IngestError: as ``load_interactions`` (naming the file and line inside this
        process's part); also for compressed text, whose bytes cannot be split.
      UsageError, TypeError: as ``load_interactions`` for an argument that cannot work.
    """
    a = ingest_arguments(**options)
    fmt, refs, sep, header, ids, square = a["fmt"], a["refs"], a["sep"], a["header"], a["ids"], a["square"]
    shape, duplicates, allow_negative, keep_zeros = a["shape"], a["duplicates"], a["allow_negative"], a["keep_zeros"]
    n_proc, me = jax.process_count(), jax.process_index()
    part = (me, n_proc)
    clock = [time.perf_counter()]

    def phase(what: str) -> None:
        now = time.perf_counter()
        log.info("%s part %d/%d: %s in %.2fs", path, me, n_proc, what, now - clock[0])
        clock[0] = now

    raw = read_source(path, fmt=fmt, refs=refs, sep=sep, header=header, ids=ids, square=square, part=part)
    # Text: one part may hold only integer-looking ids; all must parse a column the same way.
    text = (fmt or suffix_format(path)) not in ("npz", "parquet")
    if text and ids != "index":
        strs = [r for r, c in (("row", raw.rows), ("col", raw.cols)) if is_str(c)]
        want = tuple(r for r in ("row", "col") if _any_process(r in strs))
        if square and want:
            want = ("row", "col")
        if set(want) - set(strs):
            raw = read_source(
                path, fmt=fmt, refs=refs, sep=sep, header=header, ids=ids, square=square, part=part, str_roles=want
            )
    src, n_read = raw.source, len(raw.rows)
    phase(f"parsed {n_read:,} entries")
    declared = shape if shape is not None else raw.shape
    mode = ids
    if mode == "auto":
        _check_mixed_ids(raw)
        has_str = _any_process(is_str(raw.rows) or is_str(raw.cols))
        mode = "index" if raw.native_index or not has_str else "map"
    n_total = int(dist.allreduce_sum(np.array([n_read]))[0])
    declared_by = "shape=" if shape is not None else f"the 'shape' of {src}"
    least_ram = -_global_max(np.array([-guards.available_ram()], np.int64))  # every process decides on the same budget
    rows, cols, row_vocab, col_vocab, n_rows, n_cols = encode_ids(
        raw,
        mode,
        declared,
        square,
        _global_vocab,
        _global_max,
        n_entries=n_total,
        declared_by=declared_by,
        available=least_ram,
    )
    if _global_max(np.array([n_read])) <= 0 or n_rows * n_cols == 0:
        raise fail(src, None, "no entries")

    raw.rows = raw.cols = None  # the parsed id columns (strings: the largest arrays here) are encoded
    phase("ids agreed")
    values = None if raw.values is None else checked_values(raw, allow_negative)
    key = (np.int64(me) << _PART_SHIFT) + np.arange(n_read, dtype=np.int64)
    ts, test = raw.timestamps, raw.is_test
    if values is not None and not keep_zeros:
        nz = values != 0
        rows, cols, values, key = rows[nz], cols[nz], values[nz], key[nz]
        ts = None if ts is None else ts[nz]
        test = None if test is None else test[nz]
    dropped_here = n_read - len(rows)

    # Route every entry to the owner of its row; the owner merges duplicates in file order.
    counts = dist.allreduce_sum(np.bincount(rows, minlength=n_rows))
    cuts = group_ranges(counts, n_proc)
    fields = [rows.astype(np.int32), cols.astype(np.int32), key]
    extras = [
        x
        for x in (values, None if ts is None else ts.astype(np.int64), None if test is None else test.astype(np.int32))
        if x is not None
    ]
    dtypes = [np.int32, np.int32, np.int64] + [x.dtype for x in extras]
    has = (values is not None, ts is not None, test is not None)
    payload = pack_fields(fields + extras)
    del fields, extras, rows, cols, key, values, ts, test  # only the packed copy travels on
    got = unpack_fields(dist.route(payload, np.searchsorted(cuts, payload[:, 0], side="right") - 1), dtypes)
    del payload
    phase("routed to row owners")
    rows, cols, key = got[:3]
    rest = iter(got[3:])
    values = next(rest) if has[0] else None
    ts = next(rest) if has[1] else None
    test = next(rest).astype(bool) if has[2] else None
    order = np.argsort(key, kind="stable")  # file order, so 'first' keeps the earliest line
    rows, cols, key = rows[order], cols[order], key[order]
    values = None if values is None else values[order]
    ts = None if ts is None else ts[order]
    test = None if test is None else test[order]

    def where(positions) -> list[str]:
        return [
            f"entry {int(key[p] & ((1 << _PART_SHIFT) - 1))} of process {int(key[p] >> _PART_SHIFT)}'s part"
            for p in positions
        ]

    pair_name = pair_namer(rows, cols, row_vocab, col_vocab, mode)
    rows, cols, values, ts, test, merged = sort_dedupe(
        rows, cols, n_cols, values, ts, test, duplicates, where, pair_name, src
    )
    local = Interactions(
        rows=rows,
        cols=cols,
        values=np.ones(len(rows), np.float32) if values is None else values,
        shape=(int(n_rows), int(n_cols)),
        row_vocab=row_vocab,
        col_vocab=col_vocab,
        timestamps=ts,
        is_test=test,
    )
    phase("sorted and merged")
    totals = dist.allreduce_sum(np.array([n_read, local.nnz, merged, dropped_here]))
    summary = IngestSummary(
        source=src,
        rows_read=int(totals[0]),
        kept=int(totals[1]),
        merged_duplicates=int(totals[2]),
        dropped_zeros=int(totals[3]),
        rejected=0,
        n_rows=int(n_rows),
        n_cols=int(n_cols),
        columns=raw.columns,
    )
    return Partitioned(
        local=local,
        row_range=(int(cuts[me]), int(cuts[me + 1])),
        row_counts=dist.allreduce_sum(np.bincount(local.rows, minlength=n_rows)),
        col_counts=dist.allreduce_sum(np.bincount(local.cols, minlength=n_cols)),
        summary=summary,
    )


# ---------------------------------------------------------------------------- split, engine
def split_partitioned(p: Partitioned, kind: str, **kw):
    """The split of this process's rows that splitting the whole matrix would give them.

    ``kind`` and ``kw`` as :func:`alsx.data.split.by_name`.  Every split is row-local
    (entries are ordered by a seeded hash of (row, col)) and held-out rows are drawn from
    the global row lengths, so the processes' splits together are the one-process split.
    """
    return by_name(kind, p.local, row_lengths=p.row_counts, **kw)


def engine_inputs(
    train: Interactions, alpha: float | None, mesh, tied: bool
) -> tuple[CSR, CSR, np.ndarray, np.ndarray]:
    """(rows CSR, cols CSR, global row counts, global column counts) for a ShardedEngine on ``mesh``.

    ``train`` holds some rows (this process's); each entry is sent to the process whose
    shards own its row in the engine's row layout, and to the one owning its column, so
    each process ends with exactly the rows and columns its devices solve.
    """
    n_rows, n_cols = train.shape
    rc = dist.allreduce_sum(np.bincount(train.rows, minlength=n_rows))
    cc = dist.allreduce_sum(np.bincount(train.cols, minlength=n_cols))
    row_layout, col_layout = engine_layouts(rc, cc, mesh, tied)
    proc_of_shard = shard_processes(mesh)
    conf = train.confidence(alpha).astype(np.float32)
    payload = pack_fields([train.rows.astype(np.int32), train.cols.astype(np.int32), conf])
    dtypes = [np.int32, np.int32, np.float32]

    def to_owner(layout, ids, n, m, transpose) -> CSR:
        r, c, v = unpack_fields(dist.route(payload, proc_of_shard[layout.owner(ids)[0]]), dtypes)
        return coo_to_csr(c, r, v, m, n) if transpose else coo_to_csr(r, c, v, n, m)

    rows = to_owner(row_layout, train.rows, n_rows, n_cols, False)
    cols = to_owner(col_layout, train.cols, n_rows, n_cols, True)
    return rows, cols, rc, cc


def gather_to_lead(x: Interactions) -> Interactions | None:
    """Process 0 gets every process's entries of ``x`` (values kept; others get None).

    For what one process writes or folds in at the end (``train.npz``, held-out rows).
    """
    payload = pack_fields([x.rows.astype(np.int32), x.cols.astype(np.int32), x.values.astype(np.float32)])
    got = dist.route(payload, np.zeros(x.nnz, np.int64))
    if jax.process_index() != 0:
        return None
    r, c, v = unpack_fields(got, [np.int32, np.int32, np.float32])
    order = np.lexsort((c, r))
    return Interactions(
        rows=r[order], cols=c[order], values=v[order], shape=x.shape, row_vocab=x.row_vocab, col_vocab=x.col_vocab
    )
