"""The on-disk WebGraph dataset: a manifest plus memory-mappable ``.npy`` CSR shards.

Layout of a dataset directory::

    DIR/manifest.json                       format version, sizes, parameters, step counts, files
    DIR/train_csr/shard_00000.indptr.npy    int64 [shard_rows + 1], starts at 0
    DIR/train_csr/shard_00000.indices.npy   int32 [shard_nnz], global column ids, sorted per row
    DIR/train_csc/...                       the transpose of train, same layout
    DIR/foldin_csr/..., DIR/truth_csr/...   rows = held-out rows, in ``heldout_rows`` order
    DIR/heldout_rows.npy                    int32 [n_heldout] node ids, increasing
    DIR/node_ids.npy                        optional int64 [n_nodes] original id of each node

The graph is binary, so no values are stored; readers get a zero-stride float32
view of ones. Shards are row ranges, each a self-contained CSR (local indptr from
0, global column ids), so a shard can be mapped and handed to a worker alone.

Two writers produce the shards:

* :class:`ExternalCSRBuilder` turns *unordered* (row, col) pairs into a sorted,
  deduplicated CSR in bounded memory: pass 1 counts row lengths, the indices
  file is then allocated on disk, pass 2 scatters each chunk at per-row write
  cursors, and a final block-wise pass sorts and deduplicates every row in place.
* :class:`SequentialCSRWriter` appends rows that already come in row order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from alsx.data.matrix import CSR

FORMAT_NAME = "alsx-webgraph"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

#: Default cap on entries per shard (4 GiB of int32 indices).
DEFAULT_MAX_SHARD_NNZ = 1 << 30
#: Entries loaded at once when sorting/deduplicating rows (about 1 GiB of temporaries).
DEFAULT_BLOCK_NNZ = 1 << 25

# Every .npy written here has a fixed 128-byte header, so the shape can be
# rewritten in place once the final length is known (after deduplication or
# appending) without moving the data.
_HEADER_BYTES = 128


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A valid .npy v1.0 header padded to exactly ``_HEADER_BYTES`` bytes."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    hlen = _HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(body) + 1 > hlen:  # pragma: no cover - shapes here are 1-D
        raise ValueError(f"npy header too long for shape {shape}")
    body = body + b" " * (hlen - len(body) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen) + body


def _create_npy(path: Path, dtype: np.dtype, length: int) -> np.memmap | None:
    """Creates a sparse .npy file of ``length`` items and maps it read-write (None if empty)."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        f.write(_npy_header(dtype, (length,)))
        f.truncate(_HEADER_BYTES + length * dtype.itemsize)
    if length == 0:
        return None  # mmap of an empty range is not allowed
    return np.memmap(path, dtype=dtype, mode="r+", offset=_HEADER_BYTES, shape=(length,))


def _shrink_npy(path: Path, dtype: np.dtype, length: int) -> None:
    """Rewrites the header of a file from :func:`_create_npy` to ``length`` items and truncates."""
    dtype = np.dtype(dtype)
    with open(path, "r+b") as f:
        f.write(_npy_header(dtype, (length,)))
        f.truncate(_HEADER_BYTES + length * dtype.itemsize)


def row_blocks(indptr: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Splits rows into consecutive ranges [r0, r1) holding at most ``max_nnz`` entries.

    A single row longer than ``max_nnz`` gets a block of its own.

    Args:
      indptr: int64 [n_rows + 1].
    """
    n = len(indptr) - 1
    out: list[tuple[int, int]] = []
    r = 0
    while r < n:
        r1 = int(np.searchsorted(indptr, indptr[r] + max_nnz, side="right")) - 1
        r1 = min(max(r1, r + 1), n)
        out.append((r, r1))
        r = r1
    return out


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
        blocks = row_blocks(indptr, self.max_shard_nnz) or [(0, self.n_rows)]
        self._bounds = np.array([b[0] for b in blocks] + [self.n_rows], dtype=np.int64)
        # Per-row write cursor, as an offset inside the row's shard file.
        self._cursor = indptr[:-1].copy()
        for k, (r0, r1) in enumerate(blocks):
            self._cursor[r0:r1] -= indptr[r0]
            path = self.directory / f"shard_{k:05d}.indices.npy"
            self._paths.append(path)
            self._maps.append(_create_npy(path, np.int32, int(indptr[r1] - indptr[r0])))
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
        new = np.empty(m, dtype=bool)
        new[0] = True
        np.not_equal(sr[1:], sr[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        del new
        sizes = np.diff(np.append(starts, m))
        urows = sr[starts]
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
            plan += [(k, r0 + a, r0 + b) for a, b in row_blocks(local, budget_nnz)] or [(k, r0, r1)]
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
            new = np.empty(m, dtype=bool)
            new[0] = True
            np.not_equal(sr[1:], sr[:-1], out=new[1:])
            starts = np.flatnonzero(new)
            sizes = np.diff(np.append(starts, m))
            urows = sr[starts]
            pos = np.repeat(cursor[urows] - starts, sizes) + np.arange(m, dtype=np.int64)
            if len(pos) and pos.max() >= len(buf):
                raise RuntimeError("fill received more entries than count() saw; the two passes must see the same chunks")
            buf[pos] = (key & 0xFFFFFFFF).astype(np.int32)
            cursor[urows] += sizes
        if not np.array_equal(cursor, self._indptr[r0 + 1 : r1 + 1] - base):
            raise RuntimeError("fill saw fewer entries than count(); the two passes must see the same chunks")
        local = self._indptr[r0 : r1 + 1] - base
        new_indptr = self._sort_rows(buf, local)
        w = int(new_indptr[-1])
        with open(self._paths[k], "r+b") as f:
            f.seek(_HEADER_BYTES + 4 * self._written[k])
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
            _shrink_npy(self._paths[k], np.int32, nnz)
            indptr = np.zeros(r1 - r0 + 1, dtype=np.int64)
            np.cumsum(self._row_lengths[r0:r1], out=indptr[1:])
            if indptr[-1] != nnz:
                raise RuntimeError("fill_bucket was not run on every bucket")
            ip_path = self.directory / f"shard_{k:05d}.indptr.npy"
            np.save(ip_path, indptr)
            shards.append(
                {
                    "row_start": r0,
                    "row_stop": r1,
                    "nnz": nnz,
                    "indptr": f"{self.directory.name}/{ip_path.name}",
                    "indices": f"{self.directory.name}/{self._paths[k].name}",
                }
            )
        return {
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "nnz": sum(s["nnz"] for s in shards),
            "nnz_before_dedupe": int(self._indptr[-1]),
            "shards": shards,
        }

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
        end = self._indptr[1:] - self._indptr[self._bounds[np.searchsorted(self._bounds, np.arange(self.n_rows), side="right") - 1]]
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
            _shrink_npy(self._paths[k], np.int32, nnz)
            ip_path = self.directory / f"shard_{k:05d}.indptr.npy"
            np.save(ip_path, new_indptr)
            shards.append(
                {
                    "row_start": r0,
                    "row_stop": r1,
                    "nnz": nnz,
                    "indptr": f"{self.directory.name}/{ip_path.name}",
                    "indices": f"{self.directory.name}/{self._paths[k].name}",
                }
            )
        total = sum(s["nnz"] for s in shards)
        return {
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "nnz": total,
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
        for r0, r1 in row_blocks(indptr, self.block_nnz):
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


class _NpyAppender:
    """Appends 1-D arrays to a .npy file; the header is fixed up on close."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._f = open(path, "wb")
        self._f.write(_npy_header(self.dtype, (0,)))

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self._f.write(memoryview(a).cast("B"))
        self.length += len(a)

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(_npy_header(self.dtype, (self.length,)))
        self._f.close()


class SequentialCSRWriter:
    """Writes a CSR whose rows arrive in order, cutting shards at row boundaries.

    Args:
      directory: folder for the shard files (created).
      n_cols: number of columns.
      max_shard_nnz: entries per shard before a new one is started.
    """

    def __init__(self, directory: str | os.PathLike, n_cols: int, *, max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n_cols = int(n_cols)
        self.max_shard_nnz = int(max_shard_nnz)
        self.n_rows = 0
        self._shards: list[dict[str, Any]] = []
        self._file: _NpyAppender | None = None
        self._lengths: list[np.ndarray] = []
        self._row_start = 0

    def _open(self) -> None:
        k = len(self._shards)
        self._file = _NpyAppender(self.directory / f"shard_{k:05d}.indices.npy", np.int32)
        self._lengths = []
        self._row_start = self.n_rows

    def _close_shard(self) -> None:
        assert self._file is not None
        self._file.close()
        k = len(self._shards)
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        ip = self.directory / f"shard_{k:05d}.indptr.npy"
        np.save(ip, indptr)
        self._shards.append(
            {
                "row_start": self._row_start,
                "row_stop": self.n_rows,
                "nnz": int(indptr[-1]),
                "indptr": f"{self.directory.name}/{ip.name}",
                "indices": f"{self.directory.name}/{self._file.path.name}",
            }
        )
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


# ---------------------------------------------------------------------------
# reading


def _load(path: Path, dtype: np.dtype) -> np.ndarray:
    """np.load(mmap_mode='r'), except empty arrays which cannot be mapped."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="r")


def _ones(n: int) -> np.ndarray:
    """float32 [n] of ones without allocating (zero-stride, read-only)."""
    return np.broadcast_to(np.float32(1.0), (n,))


@dataclasses.dataclass(frozen=True)
class Shard:
    """One row range of a matrix: rows [row_start, row_stop) as a CSR with local rows."""

    row_start: int
    row_stop: int
    csr: CSR


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def file_list(root: str | os.PathLike, *, checksum: bool = False) -> list[dict[str, Any]]:
    """Every file under ``root`` except the manifest: path, bytes and optionally sha256."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            entry: dict[str, Any] = {"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size}
            if checksum:
                entry["sha256"] = sha256_file(p)
            out.append(entry)
    return out


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any], *, checksum: bool = False) -> dict[str, Any]:
    """Adds format fields and the file list, writes ``root/manifest.json``, returns it."""
    root = Path(root)
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    full["files"] = file_list(root, checksum=checksum)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, root / MANIFEST)  # the manifest appears last: its presence marks a complete dataset
    return full


class WebGraphDataset:
    """A dataset directory opened read-only; arrays are memory-mapped, not read.

    Attributes:
      path: the directory.
      manifest: the parsed ``manifest.json``.
      n_nodes: rows (= columns) of the train matrix.
      heldout_rows: int32 [n_heldout] node ids whose rows are kept out of training.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{mpath} not found: not a webgraph dataset (or an unfinished write)")
        self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        if self.manifest.get("format") != FORMAT_NAME:
            raise ValueError(f"{mpath}: format is {self.manifest.get('format')!r}, expected {FORMAT_NAME!r}")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{mpath}: format_version {self.manifest['format_version']} is newer than this reader ({FORMAT_VERSION})"
            )
        self.n_nodes = int(self.manifest["n_nodes"])
        self.heldout_rows = _load(self.path / self.manifest["arrays"]["heldout_rows"], np.int32)

    def __repr__(self) -> str:
        m = self.manifest
        return f"WebGraphDataset({str(self.path)!r}, n_nodes={self.n_nodes}, nnz={m['nnz']}, heldout={len(self.heldout_rows)})"

    @property
    def matrices(self) -> list[str]:
        return list(self.manifest["matrices"])

    def shards(self, name: str) -> list[Shard]:
        """The row-range shards of matrix ``name`` (train_csr, train_csc, foldin_csr, truth_csr)."""
        info = self.manifest["matrices"][name]
        out = []
        for s in info["shards"]:
            indptr = _load(self.path / s["indptr"], np.int64)
            indices = _load(self.path / s["indices"], np.int32)
            csr = CSR(indptr=indptr, indices=indices, values=_ones(len(indices)), n_cols=int(info["n_cols"]))
            out.append(Shard(int(s["row_start"]), int(s["row_stop"]), csr))
        return out

    def iter_shards(self, name: str) -> Iterator[Shard]:
        yield from self.shards(name)

    def matrix(self, name: str) -> CSR:
        """The whole matrix ``name`` as one CSR.

        With one shard (the usual case) the arrays are the memory maps themselves;
        with several, they are concatenated into RAM (use :meth:`shards` to avoid that).
        """
        shards = self.shards(name)
        if len(shards) == 1:
            return shards[0].csr
        n_cols = int(self.manifest["matrices"][name]["n_cols"])
        offsets = np.cumsum([0] + [s.csr.nnz for s in shards])
        indptr = np.concatenate([[0]] + [s.csr.indptr[1:] + o for s, o in zip(shards, offsets)]).astype(np.int64)
        indices = np.concatenate([s.csr.indices for s in shards]).astype(np.int32, copy=False)
        return CSR(indptr=indptr, indices=indices, values=_ones(len(indices)), n_cols=n_cols)

    def train_csr(self) -> CSR:
        """[n_nodes x n_nodes] node -> out-link targets, held-out rows empty."""
        return self.matrix("train_csr")

    def train_csc(self) -> CSR:
        """[n_nodes x n_nodes] transpose of :meth:`train_csr` (node -> in-link sources)."""
        return self.matrix("train_csc")

    def foldin_csr(self) -> CSR:
        """[n_heldout x n_nodes] history of each held-out row (folded in at evaluation)."""
        return self.matrix("foldin_csr")

    def truth_csr(self) -> CSR:
        """[n_heldout x n_nodes] the held-out rows' remaining links (ground truth)."""
        return self.matrix("truth_csr")

    def array(self, name: str) -> np.ndarray | None:
        """An extra per-node array listed under ``manifest['arrays']`` (e.g. ``node_ids``), or None."""
        rel = self.manifest["arrays"].get(name)
        return None if rel is None else _load(self.path / rel, np.int64)

    def node_names(self) -> list[str] | None:
        """URL edge-list builds: the URL of each node (from ``nodes.parquet``), else None."""
        rel = self.manifest["arrays"].get("node_names")
        if rel is None:
            return None
        import pyarrow.parquet as pq

        return pq.read_table(self.path / rel).column("name").to_pylist()

    def verify(self, *, checksum: bool = True) -> None:
        """Checks that every listed file exists with its size (and sha256 where recorded)."""
        for f in self.manifest["files"]:
            p = self.path / f["path"]
            if not p.exists():
                raise FileNotFoundError(f"{p} listed in the manifest is missing")
            if p.stat().st_size != f["bytes"]:
                raise ValueError(f"{p}: {p.stat().st_size} bytes, manifest says {f['bytes']}")
            if checksum and "sha256" in f and sha256_file(p) != f["sha256"]:
                raise ValueError(f"{p}: sha256 mismatch")


def open_dataset(path: str | os.PathLike) -> WebGraphDataset:
    """Opens a dataset directory written by ``build_webgraph`` or ``synth_webgraph``."""
    return WebGraphDataset(path)
