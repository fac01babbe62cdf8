"""The two writers of on-disk CSR shards (row ranges, each a self-contained CSR: local indptr from 0, global column ids).

* :class:`ExternalCSRBuilder` turns *unordered* (row, col) pairs into a sorted,
  deduplicated CSR in bounded memory: pass 1 counts row lengths, the indices
  file is then allocated on disk, pass 2 scatters each chunk at per-row write
  cursors (or builds row buckets in RAM), and a final block-wise pass sorts and
  deduplicates every row in place.
* :class:`SequentialCSRWriter` appends rows that already come in row order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from alsx.data.matrix import row_ranges
from alsx.webgraph.npy_files import HEADER_BYTES, NpyAppender, create_npy, shrink_npy

#: Default cap on entries per shard (4 GiB of int32 indices).
DEFAULT_MAX_SHARD_NNZ = 1 << 30
#: Entries loaded at once when sorting/deduplicating rows (about 1 GiB of temporaries).
DEFAULT_BLOCK_NNZ = 1 << 25


def _row_groups(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, sizes, rows) of the runs of equal rows in a sorted, non-empty int64 [m] array."""
    m = len(sorted_rows)
    new = np.empty(m, dtype=bool)
    new[0] = True
    np.not_equal(sorted_rows[1:], sorted_rows[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return starts, np.diff(np.append(starts, m)), sorted_rows[starts]


def _save_shard(directory: Path, k: int, r0: int, r1: int, indptr: np.ndarray, indices: Path) -> dict[str, Any]:
    """Saves shard ``k``'s indptr file next to its ``indices`` file; its manifest entry (rows [r0, r1))."""
    ip_path = directory / f"shard_{k:05d}.indptr.npy"
    np.save(ip_path, indptr)
    return {
        "row_start": r0,
        "row_stop": r1,
        "nnz": int(indptr[-1]),
        "indptr": f"{directory.name}/{ip_path.name}",
        "indices": f"{directory.name}/{indices.name}",
    }


def _rows_of(indptr: np.ndarray) -> np.ndarray:
    """int64 [nnz] local row of every entry, for an indptr starting at 0."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


class ExternalCSRBuilder:
    """Unordered (row, col) pairs -> sorted on-disk CSR shards, in bounded memory.

    Usage: call :meth:`count` on every chunk, then :meth:`allocate`, then
    :meth:`fill` on the *same* chunks again (any chunking, any order), then
    :meth:`finalize`. Memory is O(n_rows) plus one chunk plus one sort block;
    the indices live in memory-mapped files.

    Args:
      directory: folder for this matrix's shard files (created).
      n_rows, n_cols: matrix shape.
      max_shard_nnz: rows are cut into shards of at most this many entries
        (counted before deduplication).
      dedupe: remove repeated (row, col) pairs while sorting rows.
      block_nnz: entries per sort/dedupe block.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        n_rows: int,
        n_cols: int,
        *,
        max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ,
        dedupe: bool = True,
        block_nnz: int = DEFAULT_BLOCK_NNZ,
    ) -> None:
        if n_cols >= 2**31:
            raise ValueError(f"n_cols={n_cols} does not fit int32 indices")
        self.directory = Path(directory)
        self.n_rows = int(n_rows)
        self.n_cols = int(n_cols)
        self.max_shard_nnz = int(max_shard_nnz)
        self.dedupe = dedupe
        self.block_nnz = int(block_nnz)
        self.counts = np.zeros(self.n_rows, dtype=np.int64)  # [n_rows] entries seen in pass 1
        self._indptr: np.ndarray | None = None
        self._cursor: np.ndarray | None = None
        self._bounds: np.ndarray | None = None
        self._maps: list[np.memmap | None] = []
        self._paths: list[Path] = []

    # pass 1 --------------------------------------------------------------
    def count(self, rows: np.ndarray) -> None:
        """Adds one chunk's rows (int [m]) to the length counts."""
        if self._indptr is not None:
            raise RuntimeError("count() after allocate()")
        if len(rows):
            self.counts += np.bincount(rows, minlength=self.n_rows)

    def allocate(self) -> None:
        """Fixes shard boundaries and creates the (sparse) indices files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        indptr = np.zeros(self.n_rows + 1, dtype=np.int64)
        np.cumsum(self.counts, out=indptr[1:])
        self._indptr = indptr
        blocks = row_ranges(indptr, self.max_shard_nnz) or [(0, self.n_rows)]
        self._bounds = np.array([b[0] for b in blocks] + [self.n_rows], dtype=np.int64)
        # Per-row write cursor, as an offset inside the row's shard file.
        self._cursor = indptr[:-1].copy()
        for k, (r0, r1) in enumerate(blocks):
            self._cursor[r0:r1] -= indptr[r0]
            path = self.directory / f"shard_{k:05d}.indices.npy"
            self._paths.append(path)
            self._maps.append(create_npy(path, np.int32, int(indptr[r1] - indptr[r0])))
        self._written = [0] * len(self._paths)  # entries appended per shard by fill_bucket
        self._row_lengths = np.zeros(self.n_rows, dtype=np.int64)

    # pass 2 --------------------------------------------------------------
    def fill(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Writes one chunk: rows, cols int [m] with 0 <= rows < n_rows, 0 <= cols < n_cols."""
        if self._cursor is None:
            raise RuntimeError("fill() before allocate()")
        m = len(rows)
        if m == 0:
            return
        # Sorting the chunk by row turns the scatter into "row cursor + rank within
        # row"; one sort of packed (row << 32 | col) keys is cheaper than an argsort.
        key = np.asarray(rows, dtype=np.int64) << 32
        key |= np.asarray(cols, dtype=np.int64)
        key.sort()
        sr = key >> 32
        sc = (key & 0xFFFFFFFF).astype(np.int32)
        del key
        starts, sizes, urows = _row_groups(sr)
        pos = np.repeat(self._cursor[urows] - starts, sizes)  # cursor[row] - first index of its group
        pos += np.arange(m, dtype=np.int64)
        self._cursor[urows] += sizes  # rows are unique here, so fancy += is exact
        if len(self._maps) == 1:
            self._write(0, pos, sc)
        else:
            shard = np.searchsorted(self._bounds, sr, side="right") - 1
            for k in np.unique(shard):
                sel = shard == k
                self._write(int(k), pos[sel], sc[sel])

    def _write(self, k: int, pos: np.ndarray, cols: np.ndarray) -> None:
        mm = self._maps[k]
        if mm is None or (len(pos) and pos.max() >= len(mm)):
            raise RuntimeError("fill() received more entries than count() saw; the two passes must see the same chunks")
        mm[pos] = cols

    # pass 2, bucketed ------------------------------------------------------
    def bucket_plan(self, budget_nnz: int) -> list[tuple[int, int, int]]:
        """Row ranges (shard, r0, r1) of at most ``budget_nnz`` entries, inside one shard each."""
        assert self._indptr is not None and self._bounds is not None
        plan = []
        for k in range(len(self._paths)):
            r0, r1 = int(self._bounds[k]), int(self._bounds[k + 1])
            local = self._indptr[r0 : r1 + 1] - self._indptr[r0]
            plan += [(k, r0 + a, r0 + b) for a, b in row_ranges(local, budget_nnz)] or [(k, r0, r1)]
        return plan

    def fill_bucket(self, bucket: tuple[int, int, int], chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Builds rows [r0, r1) in RAM from every chunk, sorts/dedupes them, appends them to the shard file.

        Buckets must be given in order. Unlike :meth:`fill`, the indices file is
        only written sequentially: random writes into a large memory map make the
        kernel write dirty pages back again and again (about 100x the data at
        820M edges), while a RAM bucket costs 4 bytes per entry of the bucket.
        """
        assert self._indptr is not None
        k, r0, r1 = bucket
        base = int(self._indptr[r0])
        buf = np.empty(int(self._indptr[r1]) - base, dtype=np.int32)
        cursor = self._indptr[r0:r1] - base  # [r1 - r0] write position of each row in buf
        for rows, cols in chunks:
            sel = (rows >= r0) & (rows < r1)
            if not sel.any():
                continue
            key = (np.asarray(rows[sel], dtype=np.int64) - r0) << 32
            key |= np.asarray(cols[sel], dtype=np.int64)
            key.sort()
            sr = key >> 32
            m = len(key)
            starts, sizes, urows = _row_groups(sr)
            pos = np.repeat(cursor[urows] - starts, sizes) + np.arange(m, dtype=np.int64)
            if len(pos) and pos.max() >= len(buf):
                raise RuntimeError(
                    "fill received more entries than count() saw; the two passes must see the same chunks"
                )
            buf[pos] = (key & 0xFFFFFFFF).astype(np.int32)
            cursor[urows] += sizes
        if not np.array_equal(cursor, self._indptr[r0 + 1 : r1 + 1] - base):
            raise RuntimeError("fill saw fewer entries than count(); the two passes must see the same chunks")
        local = self._indptr[r0 : r1 + 1] - base
        new_indptr = self._sort_rows(buf, local)
        w = int(new_indptr[-1])
        with open(self._paths[k], "r+b") as f:
            f.seek(HEADER_BYTES + 4 * self._written[k])
            f.write(memoryview(buf[:w]).cast("B"))
        self._written[k] += w
        self._row_lengths[r0:r1] = np.diff(new_indptr)

    def finalize_buckets(self) -> dict[str, Any]:
        """Finishes after :meth:`fill_bucket` ran on every bucket of the plan (see :meth:`finalize`)."""
        assert self._indptr is not None and self._bounds is not None
        self._maps = [None] * len(self._maps)  # unmap before truncating
        self._cursor = None
        shards = []
        for k in range(len(self._paths)):
            r0, r1 = int(self._bounds[k]), int(self._bounds[k + 1])
            nnz = int(self._written[k])
            shrink_npy(self._paths[k], np.int32, nnz)
            indptr = np.zeros(r1 - r0 + 1, dtype=np.int64)
            np.cumsum(self._row_lengths[r0:r1], out=indptr[1:])
            if indptr[-1] != nnz:
                raise RuntimeError("fill_bucket was not run on every bucket")
            shards.append(_save_shard(self.directory, k, r0, r1, indptr, self._paths[k]))
        return self._entry(shards)

    # finish --------------------------------------------------------------
    def finalize(self) -> dict[str, Any]:
        """Sorts (and deduplicates) every row in place; writes indptr files.

        Returns:
          The matrix entry for the manifest (``n_rows``, ``n_cols``, ``nnz``,
          ``nnz_before_dedupe``, ``shards``), paths relative to ``directory``'s parent.
        """
        if self._cursor is None:
            self.allocate()
        assert self._indptr is not None and self._bounds is not None
        end = (
            self._indptr[1:]
            - self._indptr[self._bounds[np.searchsorted(self._bounds, np.arange(self.n_rows), side="right") - 1]]
        )
        if not np.array_equal(self._cursor, end):
            raise RuntimeError("fill() saw fewer entries than count(); the two passes must see the same chunks")
        self._cursor = None
        shards = []
        for k in range(len(self._paths)):
            r0, r1 = int(self._bounds[k]), int(self._bounds[k + 1])
            local = self._indptr[r0 : r1 + 1] - self._indptr[r0]
            new_indptr = self._sort_rows(self._maps[k], local)
            self._maps[k] = None
            nnz = int(new_indptr[-1])
            shrink_npy(self._paths[k], np.int32, nnz)
            shards.append(_save_shard(self.directory, k, r0, r1, new_indptr, self._paths[k]))
        return self._entry(shards)

    def _entry(self, shards: list[dict[str, Any]]) -> dict[str, Any]:
        """The matrix entry for the manifest (see :meth:`finalize`)."""
        return {
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "nnz": sum(s["nnz"] for s in shards),
            "nnz_before_dedupe": int(self._indptr[-1]),
            "shards": shards,
        }

    def _sort_rows(self, mm: np.memmap | None, indptr: np.ndarray) -> np.ndarray:
        """Sorts each row of one shard, dropping repeats; compacts towards the front.

        Returns the new int64 [shard_rows + 1] indptr. Safe in place because the
        write position never passes the start of the block being read.
        """
        n = len(indptr) - 1
        lengths = np.diff(indptr)
        if mm is None:
            return np.zeros(n + 1, dtype=np.int64)
        w = 0
        for r0, r1 in row_ranges(indptr, self.block_nnz):
            s, e = int(indptr[r0]), int(indptr[r1])
            if s == e:
                continue
            # key = (local row << 32) | col sorts by row then column in one pass.
            key = _rows_of(indptr[r0 : r1 + 1] - s) << 32
            key |= np.asarray(mm[s:e], dtype=np.int64)
            key.sort()
            if self.dedupe:
                keep = np.empty(len(key), dtype=bool)
                keep[0] = True
                np.not_equal(key[1:], key[:-1], out=keep[1:])
                key = key[keep]
                del keep
                lengths[r0:r1] = np.bincount(key >> 32, minlength=r1 - r0)
            mm[w : w + len(key)] = (key & 0xFFFFFFFF).astype(np.int32)
            w += len(key)
        if isinstance(mm, np.memmap):
            mm.flush()
        out = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=out[1:])
        return out


class SequentialCSRWriter:
    """Writes a CSR whose rows arrive in order, cutting shards at row boundaries.

    Args:
      directory: folder for the shard files (created).
      n_cols: number of columns.
      max_shard_nnz: entries per shard before a new one is started.
    """

    def __init__(
        self, directory: str | os.PathLike, n_cols: int, *, max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n_cols = int(n_cols)
        self.max_shard_nnz = int(max_shard_nnz)
        self.n_rows = 0
        self._shards: list[dict[str, Any]] = []
        self._file: NpyAppender | None = None
        self._lengths: list[np.ndarray] = []
        self._row_start = 0

    def _open(self) -> None:
        k = len(self._shards)
        self._file = NpyAppender(self.directory / f"shard_{k:05d}.indices.npy", np.int32)
        self._lengths = []
        self._row_start = self.n_rows

    def _close_shard(self) -> None:
        assert self._file is not None
        self._file.close()
        k = len(self._shards)
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        self._shards.append(_save_shard(self.directory, k, self._row_start, self.n_rows, indptr, self._file.path))
        self._file = None

    def append(self, lengths: np.ndarray, indices: np.ndarray) -> None:
        """Appends consecutive rows.

        Args:
          lengths: int [k] entries of each new row.
          indices: int32 [sum(lengths)] their columns, sorted within each row.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        indices = np.asarray(indices)
        ends = np.cumsum(lengths)
        if len(ends) and ends[-1] != len(indices):
            raise ValueError(f"lengths sum to {ends[-1]} but {len(indices)} indices were given")
        r, off = 0, 0
        while r < len(lengths):
            if self._file is None:
                self._open()
            assert self._file is not None
            room = self.max_shard_nnz - self._file.length
            # Take the longest prefix of rows that still fits this shard.
            k = int(np.searchsorted(ends[r:] - off, room, side="right"))
            if k == 0:
                if self._file.length > 0:
                    self._close_shard()
                    continue
                k = 1  # a single row larger than a shard gets a shard of its own
            stop = int(ends[r + k - 1])
            self._file.append(indices[off:stop])
            self._lengths.append(lengths[r : r + k])
            self.n_rows += k
            r, off = r + k, stop

    def close(self) -> dict[str, Any]:
        """Finishes the last shard and returns the manifest entry (see ExternalCSRBuilder.finalize)."""
        if self._file is not None or not self._shards:
            if self._file is None:
                self._open()
            self._close_shard()
        nnz = sum(s["nnz"] for s in self._shards)
        return {"n_rows": self.n_rows, "n_cols": self.n_cols, "nnz": nnz, "shards": self._shards}
