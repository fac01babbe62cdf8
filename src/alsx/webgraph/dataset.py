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

The shards are written by :mod:`alsx.webgraph.csr_writers` (:class:`ExternalCSRBuilder`,
:class:`SequentialCSRWriter`, re-exported here) on :mod:`alsx.webgraph.npy_files`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from alsx.data.matrix import CSR, row_ranges
from alsx.webgraph.csr_writers import DEFAULT_BLOCK_NNZ, DEFAULT_MAX_SHARD_NNZ, ExternalCSRBuilder, SequentialCSRWriter  # noqa: F401 -- re-exported: the dataset's writers
from alsx.webgraph.npy_files import load_npy, ones

FORMAT_NAME = "alsx-webgraph"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def is_dataset(path: str | os.PathLike) -> bool:
    """True for a directory written by ``alsx webgraph build/synth`` (it has a manifest)."""
    return (Path(path) / MANIFEST).is_file()


@dataclasses.dataclass(frozen=True)
class Shard:
    """One row range of a matrix: rows [row_start, row_stop) as a CSR with local rows."""

    row_start: int
    row_stop: int
    csr: CSR


def open_shard(root: Path, entry: dict[str, Any], n_cols: int) -> Shard:
    """The shard a manifest ``shards`` entry describes, its files under ``root`` memory-mapped."""
    indptr = load_npy(root / entry["indptr"], np.int64)
    indices = load_npy(root / entry["indices"], np.int32)
    csr = CSR(indptr=indptr, indices=indices, values=ones(len(indices)), n_cols=n_cols)
    return Shard(int(entry["row_start"]), int(entry["row_stop"]), csr)


def csr_blocks(csr: CSR, block_nnz: int, row_start: int = 0) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Streams a CSR in row blocks of at most ``block_nnz`` entries (a longer row alone).

    Yields:
      (g0, g1, rows, cols): rows [g0, g1) (local rows offset by ``row_start``), rows int64 [m]
      the row of each entry, cols [m] its column as stored (int32, read from a map).
    """
    indptr = np.asarray(csr.indptr)
    for r0, r1 in row_ranges(indptr, block_nnz):
        s, e = int(indptr[r0]), int(indptr[r1])
        rows = np.repeat(np.arange(row_start + r0, row_start + r1, dtype=np.int64), np.diff(indptr[r0 : r1 + 1]))
        yield row_start + r0, row_start + r1, rows, np.asarray(csr.indices[s:e])


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
        self.heldout_rows = load_npy(self.path / self.manifest["arrays"]["heldout_rows"], np.int32)

    def __repr__(self) -> str:
        m = self.manifest
        return f"WebGraphDataset({str(self.path)!r}, n_nodes={self.n_nodes}, nnz={m['nnz']}, heldout={len(self.heldout_rows)})"

    @property
    def matrices(self) -> list[str]:
        return list(self.manifest["matrices"])

    def shards(self, name: str) -> list[Shard]:
        """The row-range shards of matrix ``name`` (train_csr, train_csc, foldin_csr, truth_csr)."""
        info = self.manifest["matrices"][name]
        return [open_shard(self.path, s, int(info["n_cols"])) for s in info["shards"]]

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
        return CSR(indptr=indptr, indices=indices, values=ones(len(indices)), n_cols=n_cols)

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
        return None if rel is None else load_npy(self.path / rel, np.int64)

    def node_names(self) -> list[str] | None:
        """URL edge-list builds: the URL of each node (from ``nodes.parquet``), else None."""
        rel = self.manifest["arrays"].get("node_names")
        if rel is None:
            return None
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
