"""The read stage of a WebGraph build: text inputs -> the kept edges spilled to disk, and the stage numbering.

Inputs are Common Crawl ``vertices``/``edges`` files (:class:`CCInputs`) or a plain
``src dst`` edge list of integer ids or URLs, streamed in chunks with
``pyarrow.csv.open_csv``; nodes whose TLD is not wanted, and edges touching them,
are dropped here (:mod:`alsx.webgraph.vocabulary`).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from alsx.webgraph.npy_files import NpyAppender, load_npy
from alsx.webgraph.variant import EdgeChunks, progress_bar
from alsx.webgraph.vocabulary import GrowBool, UrlVocab, reversed_host_tlds


@dataclasses.dataclass(frozen=True)
class CCInputs:
    """Common Crawl web-graph files (host or domain graph), gzip or plain text.

    Attributes:
      vertices: path, glob or list of them; lines ``id<TAB>reversed.host.name[<TAB>extra...]``.
      edges: path, glob or list of them; lines ``from_id<TAB>to_id``.
    """

    vertices: str | os.PathLike | Sequence[str | os.PathLike]
    edges: str | os.PathLike | Sequence[str | os.PathLike]


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Paths from a path, a glob, or a list of either; sorted within each glob."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for it in items:
        it = os.fspath(it)
        hits = sorted(glob.glob(it))
        if not hits:
            raise FileNotFoundError(f"no input file matches {it!r}")
        out.extend(hits)
    return out


def _open_text(path: str):
    return (
        gzip.open(path, "rt", encoding="utf-8", errors="replace")
        if path.endswith(".gz")
        else open(path, encoding="utf-8", errors="replace")
    )


def sniff(path: str) -> tuple[int, str, list[str]]:
    """(leading comment lines, delimiter, tokens of the first data line) of an edge list."""
    skip = 0
    with _open_text(path) as f:
        for line in f:
            if line.startswith(("#", "%")) or not line.strip():
                skip += 1
                continue
            delim = "\t" if "\t" in line else " "
            return skip, delim, line.rstrip("\r\n").split(delim)
    return skip, "\t", []


def _csv_batches(
    path: str, types: Sequence[Any], *, delimiter: str = "\t", skip_rows: int = 0, block_size: int = 1 << 24
):
    """Streams record batches of the first ``len(types)`` columns of a delimited text file.

    Extra columns (the domain graph's host counts) are ignored; quoting is off
    because host names and URLs are taken verbatim.
    """
    names = [f"f{i}" for i in range(len(types))]
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block_size, autogenerate_column_names=True, skip_rows=skip_rows),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False, escape_char=False),
        convert_options=pacsv.ConvertOptions(column_types=dict(zip(names, types)), include_columns=names),
    )
    for batch in reader:
        if batch.num_rows:
            yield batch


@dataclasses.dataclass
class Ingested:
    """Result of ingest: kept edges on disk (original ids) and the stage numbering."""

    spill: Path
    n_spilled: int
    remap: np.ndarray  # int32/int64 [id space] stage id, -1 if not kept
    node_ids: np.ndarray  # int64 [n_stage] original id of each stage node
    names: list[str] | None  # URL mode: URL of each original (first-appearance) id
    counts: dict[str, Any]
    mode: str


def _spill_kept(appender: NpyAppender, s: np.ndarray, d: np.ndarray, keep: np.ndarray) -> int:
    m = keep[s] & keep[d]
    pair = np.empty((int(m.sum()), 2), dtype=np.int64)
    pair[:, 0] = s[m]
    pair[:, 1] = d[m]
    appender.append(pair.reshape(-1))
    return len(pair)


def ingest_inputs(inputs: Any, tmp: Path, tlds: list[str] | None, *, block_size: int, progress: bool) -> Ingested:
    spill = NpyAppender(tmp / "edges.spill.npy", np.int64)
    counts: dict[str, Any] = {"input_edges": 0, "tld_edges": 0}
    bar = progress_bar(progress, desc="ingest", unit="edge", unit_scale=True)
    names = None
    if isinstance(inputs, Mapping):
        inputs = CCInputs(**inputs)
    if isinstance(inputs, CCInputs):
        mode = "cc"
        known = GrowBool()  # ids listed in the vertices files
        keep = GrowBool()
        n_vertices = 0
        for path in expand_paths(inputs.vertices):
            for b in _csv_batches(path, [pa.int64(), pa.string()], block_size=block_size):
                ids = b.column(0).to_numpy()
                n_vertices += len(ids)
                top = int(ids.max()) + 1
                known.ensure(top)
                keep.ensure(top)
                known.a[ids] = True
                keep.a[ids] = (
                    True
                    if tlds is None
                    else pc.is_in(reversed_host_tlds(b.column(1)), value_set=pa.array(tlds)).to_numpy(
                        zero_copy_only=False
                    )
                )
        counts["input_vertices"] = n_vertices
        counts["edges_unknown_vertex"] = 0
        kv = keep.view()
        for path in expand_paths(inputs.edges):
            for b in _csv_batches(path, [pa.int64(), pa.int64()], block_size=block_size):
                s, d = b.column(0).to_numpy(), b.column(1).to_numpy()
                counts["input_edges"] += len(s)
                inside = (s < known.size) & (d < known.size) & (s >= 0) & (d >= 0)
                inside[inside] = known.a[s[inside]] & known.a[d[inside]]
                counts["edges_unknown_vertex"] += int((~inside).sum())
                s, d = s[inside], d[inside]
                counts["tld_edges"] += _spill_kept(spill, s, d, kv)
                bar.update(len(b))
        mask = kv
    else:
        paths = expand_paths(inputs)
        skip, delim, first = sniff(paths[0])
        is_int = len(first) >= 2 and first[0].isdigit() and first[1].isdigit()
        if is_int and tlds is not None:
            raise ValueError("a TLD filter needs host names: give Common Crawl vertices+edges or a URL edge list")
        mode = "edgelist-int" if is_int else "edgelist-url"
        seen = GrowBool()
        vocab = None if is_int else UrlVocab(tlds)
        t = pa.int64() if is_int else pa.string()
        for path in paths:
            skip, delim, _ = sniff(path)
            for b in _csv_batches(path, [t, t], delimiter=delim, skip_rows=skip, block_size=block_size):
                if is_int:
                    s, d = b.column(0).to_numpy(), b.column(1).to_numpy()
                    if len(s) and min(s.min(), d.min()) < 0:
                        raise ValueError(f"{path}: negative node id")
                    seen.ensure(int(max(s.max(), d.max())) + 1)
                    seen.a[s] = True
                    seen.a[d] = True
                    kv = seen.view()
                else:
                    s, d = vocab.encode(b.column(0)), vocab.encode(b.column(1))
                    kv = vocab.keep.view()
                counts["input_edges"] += len(s)
                counts["tld_edges"] += _spill_kept(spill, s, d, kv)
                bar.update(len(b))
        if is_int:
            counts["input_vertices"] = int(seen.view().sum())
            mask = seen.view()
        else:
            counts["input_vertices"] = len(vocab.names)
            mask = vocab.keep.view()
            names = vocab.names
    bar.close()
    spill.close()
    kept = np.flatnonzero(mask)
    if mode == "edgelist-url":
        # URL ids follow first appearance; order stage nodes by URL so the numbering
        # is a property of the data alone (Spark reproduces it).
        order = np.asarray(pc.sort_indices(pa.array([names[i] for i in kept], type=pa.string())))
        kept = kept[order]
    itype = np.int32 if len(kept) < 2**31 else np.int64
    remap = np.full(len(mask), -1, dtype=itype)
    remap[kept] = np.arange(len(kept), dtype=itype)
    counts["tld_nodes"] = len(kept)
    return Ingested(
        spill=spill.path,
        n_spilled=spill.length // 2,
        remap=remap,
        node_ids=kept.astype(np.int64),
        names=names,
        counts=counts,
        mode=mode,
    )


def spill_chunks(ing: Ingested, chunk_edges: int) -> EdgeChunks:
    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if ing.n_spilled == 0:
            return
        pairs = load_npy(ing.spill, np.int64).reshape(-1, 2)
        for i in range(0, len(pairs), chunk_edges):
            blk = np.asarray(pairs[i : i + chunk_edges])
            yield ing.remap[blk[:, 0]], ing.remap[blk[:, 1]]

    return gen


def write_node_names(out_dir: Path, names: list[str], fields: dict[str, Any]) -> None:
    """URL mode: node names (parquet column ``name``) of the final nodes, in node order."""
    ids = np.load(out_dir / fields["arrays"]["node_ids"])  # [n_nodes] first-appearance id of each final node
    pq.write_table(pa.table({"name": pa.array([names[i] for i in ids], type=pa.string())}), out_dir / "nodes.parquet")
    fields["arrays"]["node_names"] = "nodes.parquet"


def describe_inputs(inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        inputs = CCInputs(**inputs)
    if isinstance(inputs, CCInputs):
        return {"format": "commoncrawl", "vertices": expand_paths(inputs.vertices), "edges": expand_paths(inputs.edges)}
    return {"format": "edgelist", "paths": expand_paths(inputs)}
