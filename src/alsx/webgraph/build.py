"""Common Crawl link lists -> WebGraph benchmark variants (locality, density, held-out rows).

The pipeline, as in ALX (arXiv 2112.02194, section on WebGraph):

1. **ingest**: stream the input (Common Crawl ``vertices``/``edges`` files, or a
   plain ``src dst`` edge list of integer ids or URLs) in chunks with
   ``pyarrow.csv.open_csv``; keep nodes whose TLD is in ``tld`` and edges whose
   two ends are kept; spill the kept edges to a temporary int64 file.
2. **stage**: build the deduplicated graph on disk (CSR and its transpose) with
   the external counting sort of :class:`~alsx.webgraph.dataset.ExternalCSRBuilder`.
3. **finalize** (:func:`finalize_graph`): self-link policy, degree filter (every
   kept node needs >= K in-links and >= K out-links; one pass like ALX, or
   iterated to a fixed point), dense renumbering, held-out rows split into
   history (folded in) and truth, written as the final dataset.

Memory is O(number of nodes) plus one chunk; edges only ever live on disk.
The held-out split is a pure function of (seed, final node ids) so the result
does not depend on chunk sizes, and the Spark job reproduces it exactly.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import shutil
import time
from contextlib import nullcontext as _nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from alsx.webgraph.dataset import (
    DEFAULT_BLOCK_NNZ,
    DEFAULT_MAX_SHARD_NNZ,
    ExternalCSRBuilder,
    SequentialCSRWriter,
    Shard,
    WebGraphDataset,
    _NpyAppender,
    _load,
    open_dataset,
    row_blocks,
    write_manifest,
)

#: Edges per ingest / generation chunk (int64 pairs: 16 bytes each, plus sort temporaries).
DEFAULT_CHUNK_EDGES = 1 << 23
#: Entries of one in-RAM row bucket while filling a CSR (1 GiB of int32 per orientation).
DEFAULT_FILL_BUDGET_NNZ = 1 << 28

EdgeChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def _tqdm(progress: bool, **kw: Any):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, **kw)


# ---------------------------------------------------------------------------
# split: a pure function of (seed, node ids), shared with the Spark job

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 [n] (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split_keys(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """int64 [n] pseudo-random non-negative key of each (row, col) entry.

    The key depends only on (seed, row, col), so the history/truth split is the
    same whatever the chunking, in NumPy and in Spark (via a pandas UDF).
    """
    with np.errstate(over="ignore"):
        s = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        x = (np.asarray(rows, dtype=np.uint64) << np.uint64(32)) | np.asarray(cols, dtype=np.uint64)
        k = _splitmix64(x ^ s)
    return (k >> np.uint64(1)).astype(np.int64)  # 63 bits: fits a signed long


def select_heldout(out_degree: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Chooses the held-out rows: round(fraction * n_rows) rows among those with out-degree >= 2.

    Args:
      out_degree: int [n_rows] final out-degrees.
    Returns:
      int32 [n_heldout] sorted row ids.
    """
    eligible = np.flatnonzero(np.asarray(out_degree) >= 2)
    n = min(int(round(fraction * len(out_degree))), len(eligible))
    if n <= 0:
        return np.zeros(0, dtype=np.int32)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n, replace=False)).astype(np.int32)


def history_counts(degree: np.ndarray, history_fraction: float) -> np.ndarray:
    """int64 [n] history size per held-out row: round(f * d) clipped to [1, d - 1] (both parts non-empty)."""
    d = np.asarray(degree, dtype=np.int64)
    return np.clip(np.round(history_fraction * d).astype(np.int64), 1, np.maximum(d - 1, 1))


def history_mask(rows: np.ndarray, cols: np.ndarray, n_history: np.ndarray, seed: int) -> np.ndarray:
    """bool [n] True for entries that go to history.

    Within each row, the ``n_history[row]`` entries with the smallest
    :func:`split_keys` (ties broken by column) are history, the rest truth.

    Args:
      rows, cols: int [n] entries of complete rows (every entry of a row present).
      n_history: int [n] the history size of each entry's row.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    key = split_keys(rows, cols, seed)
    order = np.lexsort((cols, key, rows))
    sr = np.asarray(rows)[order]
    new = np.empty(len(sr), dtype=bool)
    new[0] = True
    np.not_equal(sr[1:], sr[:-1], out=new[1:])
    first = np.maximum.accumulate(np.where(new, np.arange(len(sr)), 0))
    rank = np.empty(len(sr), dtype=np.int64)
    rank[order] = np.arange(len(sr)) - first
    return rank < np.asarray(n_history)


# ---------------------------------------------------------------------------
# stage: unordered edges -> deduplicated CSR + CSC on disk


def build_stage(
    chunks: EdgeChunks,
    n_nodes: int,
    stage_dir: str | os.PathLike,
    *,
    max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
    progress: bool = False,
    n_chunks: int | None = None,
    desc: str = "edges",
    spill: bool = True,
    fill_budget_nnz: int = DEFAULT_FILL_BUDGET_NNZ,
) -> dict[str, Any]:
    """Writes the deduplicated graph of ``chunks`` as CSR + CSC (no split) under ``stage_dir``.

    Args:
      chunks: a callable returning a fresh iterable of (src, dst) int [m] chunks;
        it is iterated for counting, then (unless ``spill``) once per fill
        bucket, and must yield the same edges every time.
      n_nodes: node count; ids are in [0, n_nodes).
      spill: during the count pass, also write the chunks to a temporary file
        (8 bytes per edge) and fill from it, instead of iterating ``chunks`` again.
      fill_budget_nnz: entries per in-RAM row bucket (4 bytes each, per
        orientation); the edges are read once per bucket.
    Returns:
      The ``matrices`` manifest entries plus ``edges_in`` (before dedupe) and ``edges`` (after).
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    csr = ExternalCSRBuilder(stage_dir / "train_csr", n_nodes, n_nodes, max_shard_nnz=max_shard_nnz, block_nnz=block_nnz)
    csc = ExternalCSRBuilder(stage_dir / "train_csc", n_nodes, n_nodes, max_shard_nnz=max_shard_nnz, block_nnz=block_nnz)
    spill_path = stage_dir / "_chunks.bin"
    lengths: list[int] = []
    with open(spill_path, "wb") if spill else _nullcontext() as f:
        for src, dst in _tqdm(progress, iterable=chunks(), total=n_chunks, desc=f"{desc}: count", unit="chunk"):
            csr.count(src)
            csc.count(dst)
            if f is not None:  # int32 (src, dst) pairs: reading back is cheaper than regenerating
                pair = np.empty((len(src), 2), dtype=np.int32)
                pair[:, 0] = src
                pair[:, 1] = dst
                f.write(memoryview(pair.reshape(-1)).cast("B"))
                lengths.append(len(src))
    csr.allocate()
    csc.allocate()

    def replay() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with open(spill_path, "rb") as f:
            for m in lengths:
                pair = np.fromfile(f, dtype=np.int32, count=2 * m).reshape(-1, 2)
                yield pair[:, 0], pair[:, 1]

    source = replay if spill else chunks
    # Row buckets that fit ``fill_budget_nnz`` are built in RAM, one pass over the
    # edges per bucket pair, and written sequentially (see ExternalCSRBuilder.fill_bucket).
    plan_r, plan_c = csr.bucket_plan(fill_budget_nnz), csc.bucket_plan(fill_budget_nnz)
    try:
        for i in _tqdm(progress, iterable=range(max(len(plan_r), len(plan_c))), desc=f"{desc}: fill", unit="bucket"):
            if i < len(plan_r):
                csr.fill_bucket(plan_r[i], source())
            if i < len(plan_c):
                csc.fill_bucket(plan_c[i], ((d, s) for s, d in source()))
    finally:
        if spill:
            spill_path.unlink()
    m_csr = csr.finalize_buckets()
    m_csc = csc.finalize_buckets()
    if m_csr["nnz"] != m_csc["nnz"]:  # pragma: no cover - a bug guard
        raise RuntimeError(f"CSR has {m_csr['nnz']} entries but its transpose {m_csc['nnz']}")
    empty = {}
    for name in ("foldin_csr", "truth_csr"):
        empty[name] = SequentialCSRWriter(stage_dir / name, n_nodes).close()
    np.save(stage_dir / "heldout_rows.npy", np.zeros(0, dtype=np.int32))
    return {
        "matrices": {"train_csr": m_csr, "train_csc": m_csc, **empty},
        "edges_in": m_csr["nnz_before_dedupe"],
        "edges": m_csr["nnz"],
    }


def _iter_blocks(shards: Sequence[Shard], block_nnz: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Streams a sharded CSR in row blocks.

    Yields:
      (g0, g1, rows, cols): global row range [g0, g1), rows int64 [m] global row
      of each entry, cols int32 [m].
    """
    for sh in shards:
        indptr = np.asarray(sh.csr.indptr)
        for r0, r1 in row_blocks(indptr, block_nnz):
            s, e = int(indptr[r0]), int(indptr[r1])
            rows = np.repeat(np.arange(sh.row_start + r0, sh.row_start + r1, dtype=np.int64), np.diff(indptr[r0 : r1 + 1]))
            yield sh.row_start + r0, sh.row_start + r1, rows, np.asarray(sh.csr.indices[s:e])


def _lengths(shards: Sequence[Shard]) -> np.ndarray:
    return np.concatenate([np.diff(np.asarray(s.csr.indptr)) for s in shards]).astype(np.int64)


def _induced_degrees(
    shards: Sequence[Shard], keep: np.ndarray, drop_self: bool, block_nnz: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Out/in-degrees (int64 [n]) and edge count of the subgraph induced by ``keep``."""
    n = len(keep)
    out = np.zeros(n, dtype=np.int64)
    inn = np.zeros(n, dtype=np.int64)
    for g0, g1, r, c in _iter_blocks(shards, block_nnz):
        m = keep[r] & keep[c]
        if drop_self:
            m &= r != c
        out[g0:g1] += np.bincount(r[m] - g0, minlength=g1 - g0)
        inn += np.bincount(c[m], minlength=n)
    return out, inn, int(out.sum())


@dataclasses.dataclass(frozen=True)
class FilterResult:
    """What the self-link policy and degree filter decided, on stage node ids.

    Attributes:
      keep: bool [n_stage] nodes kept.
      out_degree, in_degree: int64 [n_stage] degrees in the kept subgraph (0 where dropped).
      n_edges: edges of the kept subgraph.
      self_links: self-links in the stage graph.
      iterations: degree-filter passes run (0 without a filter).
      nodes_per_iteration: kept node count after each pass.
    """

    keep: np.ndarray
    out_degree: np.ndarray
    in_degree: np.ndarray
    n_edges: int
    self_links: int
    iterations: int
    nodes_per_iteration: list[int]


def degree_filter(
    stage: WebGraphDataset,
    *,
    min_degree: int,
    fixed_point: bool,
    keep_self_links: bool,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
) -> FilterResult:
    """Self-link policy + the in/out-degree >= K filter on a stage graph.

    One pass (ALX): degrees are computed once on the graph, nodes with both
    degrees >= K are kept, and the edges between kept nodes remain, so some kept
    nodes end up below K. ``fixed_point=True`` repeats until no node is removed.
    Dropped self-links do not count towards degrees.
    """
    csr, csc = stage.shards("train_csr"), stage.shards("train_csc")
    n = stage.n_nodes
    out_len, in_len = _lengths(csr), _lengths(csc)
    has_self = np.zeros(n, dtype=bool)  # [n] node has a self-link (stage is deduplicated: at most one)
    for _, _, r, c in _iter_blocks(csr, block_nnz):
        has_self[r[r == c]] = True
    n_self = int(has_self.sum())
    drop = not keep_self_links
    out0 = out_len - has_self if drop else out_len
    in0 = in_len - has_self if drop else in_len
    if min_degree <= 0:
        keep = np.ones(n, dtype=bool)
        return FilterResult(keep, out0, in0, int(out0.sum()), n_self, 0, [])
    keep = (out0 >= min_degree) & (in0 >= min_degree)
    history = [int(keep.sum())]
    while True:
        out, inn, m = _induced_degrees(csr, keep, drop, block_nnz)
        if not fixed_point:
            break
        new = keep & (out >= min_degree) & (inn >= min_degree)
        if new.sum() == keep.sum():
            break
        keep = new
        history.append(int(keep.sum()))
    return FilterResult(keep, out, inn, m, n_self, len(history), history)


# ---------------------------------------------------------------------------
# finalize: stage -> final dataset


def finalize_graph(
    stage_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    min_degree: int = 0,
    fixed_point: bool = False,
    keep_self_links: bool = True,
    heldout_fraction: float = 0.1,
    history_fraction: float = 0.8,
    seed: int = 0,
    max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Filters, renumbers and splits a stage graph into ``out_dir`` (no manifest written).

    Rows of the final graph are the kept nodes in stage order. Held-out rows are
    empty in ``train_csr`` and their entries absent from ``train_csc``; their
    links are split into ``foldin_csr`` (history) and ``truth_csr``.

    Returns:
      (counts, manifest_fields): step counts, and the manifest's ``n_nodes``,
      ``matrices``, ``arrays``, ``split`` entries.
    """
    stage = open_dataset(stage_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f = degree_filter(stage, min_degree=min_degree, fixed_point=fixed_point, keep_self_links=keep_self_links, block_nnz=block_nnz)
    keep = f.keep
    drop = not keep_self_links
    new_id = np.cumsum(keep, dtype=np.int64) - 1  # [n_stage] final id where kept
    kept_idx = np.flatnonzero(keep)
    n_final = len(kept_idx)

    heldout = select_heldout(f.out_degree[kept_idx], heldout_fraction, seed)  # final ids
    is_ho = np.zeros(stage.n_nodes, dtype=bool)  # [n_stage]
    is_ho[kept_idx[heldout]] = True
    n_hist_final = np.zeros(n_final, dtype=np.int64)
    n_hist_final[heldout] = history_counts(f.out_degree[kept_idx[heldout]], history_fraction)

    train = SequentialCSRWriter(out_dir / "train_csr", n_final, max_shard_nnz=max_shard_nnz)
    foldin = SequentialCSRWriter(out_dir / "foldin_csr", n_final, max_shard_nnz=max_shard_nnz)
    truth = SequentialCSRWriter(out_dir / "truth_csr", n_final, max_shard_nnz=max_shard_nnz)
    bar = _tqdm(progress, total=stage.manifest["nnz"] * 2, desc="finalize", unit="edge", unit_scale=True)
    for g0, g1, r, c in _iter_blocks(stage.shards("train_csr"), block_nnz):
        m = keep[r] & keep[c]
        if drop:
            m &= r != c
        kr = g0 + np.flatnonzero(keep[g0:g1])  # kept stage rows of this block, final ids consecutive
        base = int(new_id[kr[0]]) if len(kr) else 0
        mt = m & ~is_ho[r]
        train.append(np.bincount(new_id[r[mt]] - base, minlength=len(kr)), new_id[c[mt]].astype(np.int32))
        hr = kr[is_ho[kr]]
        if len(hr):
            mh = m & is_ho[r]
            u, v = new_id[r[mh]], new_id[c[mh]]
            hist = history_mask(u, v, n_hist_final[u], seed)
            pos = np.searchsorted(hr, r[mh])
            foldin.append(np.bincount(pos[hist], minlength=len(hr)), v[hist].astype(np.int32))
            truth.append(np.bincount(pos[~hist], minlength=len(hr)), v[~hist].astype(np.int32))
        bar.update(len(r))
    train_t = SequentialCSRWriter(out_dir / "train_csc", n_final, max_shard_nnz=max_shard_nnz)
    for g0, g1, w, u in _iter_blocks(stage.shards("train_csc"), block_nnz):
        # Transpose rows: w = link target, u = link source; held-out sources never train.
        m = keep[w] & keep[u] & ~is_ho[u]
        if drop:
            m &= w != u
        kw = g0 + np.flatnonzero(keep[g0:g1])
        base = int(new_id[kw[0]]) if len(kw) else 0
        train_t.append(np.bincount(new_id[w[m]] - base, minlength=len(kw)), new_id[u[m]].astype(np.int32))
        bar.update(len(w))
    bar.close()
    matrices = {
        "train_csr": train.close(),
        "train_csc": train_t.close(),
        "foldin_csr": foldin.close(),
        "truth_csr": truth.close(),
    }
    if matrices["train_csr"]["nnz"] != matrices["train_csc"]["nnz"]:  # pragma: no cover - a bug guard
        raise RuntimeError("train CSR and CSC disagree")
    np.save(out_dir / "heldout_rows.npy", heldout)
    arrays = {"heldout_rows": "heldout_rows.npy"}
    for name, rel in stage.manifest["arrays"].items():
        if name == "heldout_rows":
            continue
        a = stage.array(name)
        np.save(out_dir / rel, np.asarray(a)[kept_idx])  # per-node arrays follow the renumbering
        arrays[name] = rel
    counts = {
        "self_links": f.self_links,
        "self_links_dropped": f.self_links if drop else 0,
        "degree_filter_iterations": f.iterations,
        "degree_filter_nodes_per_iteration": f.nodes_per_iteration,
        "final_nodes": n_final,
        "final_edges": f.n_edges,
        "heldout_eligible_rows": int((f.out_degree[kept_idx] >= 2).sum()),
        "heldout_rows": len(heldout),
        "train_nnz": matrices["train_csr"]["nnz"],
        "foldin_nnz": matrices["foldin_csr"]["nnz"],
        "truth_nnz": matrices["truth_csr"]["nnz"],
    }
    fields = {
        "n_nodes": n_final,
        "n_rows": n_final,
        "n_cols": n_final,
        "nnz": f.n_edges,
        "matrices": matrices,
        "arrays": arrays,
        "split": {
            "heldout_fraction": heldout_fraction,
            "history_fraction": history_fraction,
            "seed": seed,
            "n_heldout": len(heldout),
            "rule": "round(heldout_fraction*n_rows) rows with out-degree>=2; history = round(history_fraction*d) clipped to [1,d-1] entries with smallest split_keys",
        },
    }
    return counts, fields


# ---------------------------------------------------------------------------
# ingest: text inputs -> kept edges spilled to disk


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
    return gzip.open(path, "rt", encoding="utf-8", errors="replace") if path.endswith(".gz") else open(path, encoding="utf-8", errors="replace")


def _sniff(path: str) -> tuple[int, str, list[str]]:
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


def _csv_batches(path: str, types: Sequence[Any], *, delimiter: str = "\t", skip_rows: int = 0, block_size: int = 1 << 24):
    """Streams record batches of the first ``len(types)`` columns of a delimited text file.

    Extra columns (the domain graph's host counts) are ignored; quoting is off
    because host names and URLs are taken verbatim.
    """
    from pyarrow import csv

    names = [f"f{i}" for i in range(len(types))]
    reader = csv.open_csv(
        path,
        read_options=csv.ReadOptions(block_size=block_size, autogenerate_column_names=True, skip_rows=skip_rows),
        parse_options=csv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False, escape_char=False),
        convert_options=csv.ConvertOptions(column_types=dict(zip(names, types)), include_columns=names),
    )
    for batch in reader:
        if batch.num_rows:
            yield batch


def normalize_tlds(tld: str | Sequence[str] | None) -> list[str] | None:
    """['de', 'in'] from 'de', '.DE', ['de', '.in'], ...; None means no TLD filter."""
    if tld is None:
        return None
    items = [tld] if isinstance(tld, str) else list(tld)
    out = sorted({t.strip().lstrip(".").lower() for t in items if t.strip()})
    if not out:
        raise ValueError("tld filter is empty; pass None to keep every TLD")
    return out


class _GrowBool:
    """A bool array indexed by node id that grows to fit the largest id seen."""

    def __init__(self) -> None:
        self.a = np.zeros(1024, dtype=bool)
        self.size = 0  # 1 + largest id set so far

    def ensure(self, n: int) -> None:
        if n > len(self.a):
            b = np.zeros(max(n, 2 * len(self.a)), dtype=bool)
            b[: len(self.a)] = self.a
            self.a = b
        self.size = max(self.size, n)

    def view(self) -> np.ndarray:
        return self.a[: self.size]


_URL_HOST = r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://)?(?:[^@/?#]*@)?(?P<host>[^/:?#]*)"


def url_tlds(urls):
    """pyarrow string array of TLDs (last host label, lower case) of URLs or bare host names."""
    import pyarrow.compute as pc

    host = pc.struct_field(pc.extract_regex(urls, _URL_HOST), [0])
    host = pc.utf8_rtrim(pc.utf8_lower(host), characters=".")
    return pc.struct_field(pc.extract_regex(host, r"(?P<t>[^.]*)$"), [0])


def reversed_host_tlds(names):
    """pyarrow string array of TLDs of Common Crawl reversed host names (``com.example.www`` -> ``com``)."""
    import pyarrow.compute as pc

    return pc.struct_field(pc.extract_regex(pc.utf8_lower(names), r"^(?P<t>[^.]*)"), [0])


class _UrlVocab:
    """URL -> id in order of first appearance; remembers which URLs pass the TLD filter."""

    def __init__(self, tlds: list[str] | None) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.keep = _GrowBool()
        self.tlds = tlds

    def encode(self, arr) -> np.ndarray:
        """int64 [n] ids of a pyarrow string array; new URLs get new ids."""
        import pyarrow as pa
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(arr).combine_chunks() if isinstance(arr, pa.ChunkedArray) else pc.dictionary_encode(arr)
        uniq = enc.dictionary.to_pylist()
        start = len(self.names)
        local = np.empty(len(uniq), dtype=np.int64)
        for i, u in enumerate(uniq):  # one dict lookup per distinct URL of the chunk
            j = self.ids.get(u)
            if j is None:
                j = self.ids[u] = len(self.names)
                self.names.append(u)
            local[i] = j
        n_new = len(self.names) - start
        self.keep.ensure(len(self.names))
        if n_new:
            new_names = pa.array(self.names[start:], type=pa.string())
            ok = np.ones(n_new, dtype=bool) if self.tlds is None else pc.is_in(url_tlds(new_names), value_set=pa.array(self.tlds)).to_numpy(zero_copy_only=False)
            self.keep.a[start : start + n_new] = ok
        return local[enc.indices.to_numpy(zero_copy_only=False)]


@dataclasses.dataclass
class _Ingested:
    """Result of ingest: kept edges on disk (original ids) and the stage numbering."""

    spill: Path
    n_spilled: int
    remap: np.ndarray  # int32/int64 [id space] stage id, -1 if not kept
    node_ids: np.ndarray  # int64 [n_stage] original id of each stage node
    names: list[str] | None  # URL mode: URL of each original (first-appearance) id
    counts: dict[str, Any]
    mode: str


def _spill_kept(appender: _NpyAppender, s: np.ndarray, d: np.ndarray, keep: np.ndarray) -> int:
    m = keep[s] & keep[d]
    pair = np.empty((int(m.sum()), 2), dtype=np.int64)
    pair[:, 0] = s[m]
    pair[:, 1] = d[m]
    appender.append(pair.reshape(-1))
    return len(pair)


def _ingest(inputs: Any, tmp: Path, tlds: list[str] | None, *, block_size: int, progress: bool) -> _Ingested:
    import pyarrow as pa
    import pyarrow.compute as pc

    spill = _NpyAppender(tmp / "edges.spill.npy", np.int64)
    counts: dict[str, Any] = {"input_edges": 0, "tld_edges": 0}
    bar = _tqdm(progress, desc="ingest", unit="edge", unit_scale=True)
    names = None
    if isinstance(inputs, Mapping):
        inputs = CCInputs(**inputs)
    if isinstance(inputs, CCInputs):
        mode = "cc"
        known = _GrowBool()  # ids listed in the vertices files
        keep = _GrowBool()
        n_vertices = 0
        for path in expand_paths(inputs.vertices):
            for b in _csv_batches(path, [pa.int64(), pa.string()], block_size=block_size):
                ids = b.column(0).to_numpy()
                n_vertices += len(ids)
                top = int(ids.max()) + 1
                known.ensure(top)
                keep.ensure(top)
                known.a[ids] = True
                keep.a[ids] = True if tlds is None else pc.is_in(reversed_host_tlds(b.column(1)), value_set=pa.array(tlds)).to_numpy(zero_copy_only=False)
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
        skip, delim, first = _sniff(paths[0])
        is_int = len(first) >= 2 and first[0].isdigit() and first[1].isdigit()
        if is_int and tlds is not None:
            raise ValueError("a TLD filter needs host names: give Common Crawl vertices+edges or a URL edge list")
        mode = "edgelist-int" if is_int else "edgelist-url"
        seen = _GrowBool()
        vocab = None if is_int else _UrlVocab(tlds)
        t = pa.int64() if is_int else pa.string()
        for path in paths:
            skip, delim, _ = _sniff(path)
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
    return _Ingested(
        spill=spill.path,
        n_spilled=spill.length // 2,
        remap=remap,
        node_ids=kept.astype(np.int64),
        names=names,
        counts=counts,
        mode=mode,
    )


def _spill_chunks(ing: _Ingested, chunk_edges: int) -> EdgeChunks:
    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if ing.n_spilled == 0:
            return
        pairs = _load(ing.spill, np.int64).reshape(-1, 2)
        for i in range(0, len(pairs), chunk_edges):
            blk = np.asarray(pairs[i : i + chunk_edges])
            yield ing.remap[blk[:, 0]], ing.remap[blk[:, 1]]

    return gen


def _needs_finalize(min_degree: int, keep_self_links: bool, heldout_fraction: float) -> bool:
    return min_degree > 0 or not keep_self_links or heldout_fraction > 0


def stage_and_finalize(
    chunks: EdgeChunks,
    n_nodes: int,
    out_dir: str | os.PathLike,
    *,
    node_arrays: Mapping[str, np.ndarray] | None = None,
    min_degree: int = 0,
    fixed_point: bool = False,
    keep_self_links: bool = True,
    heldout_fraction: float = 0.0,
    history_fraction: float = 0.8,
    seed: int = 0,
    max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
    progress: bool = False,
    n_chunks: int | None = None,
    desc: str = "edges",
    spill: bool = True,
    fill_budget_nnz: int = DEFAULT_FILL_BUDGET_NNZ,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Edges -> final dataset files in ``out_dir`` (no manifest yet): stage, then filter/split.

    With no filter, self-links kept and no split, the stage is the final dataset
    and is written in place (no second copy of the edges).

    Args:
      node_arrays: extra per-node arrays (length n_nodes) saved as ``NAME.npy``
        and renumbered with the nodes.
    Returns:
      (counts, manifest_fields) as :func:`finalize_graph`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    direct = not _needs_finalize(min_degree, keep_self_links, heldout_fraction)
    stage_dir = out_dir if direct else out_dir / "_stage"
    st = build_stage(
        chunks, n_nodes, stage_dir, max_shard_nnz=max_shard_nnz, block_nnz=block_nnz, progress=progress, n_chunks=n_chunks, desc=desc, spill=spill,
        fill_budget_nnz=fill_budget_nnz,
    )
    arrays = {"heldout_rows": "heldout_rows.npy"}
    for name, a in (node_arrays or {}).items():
        np.save(stage_dir / f"{name}.npy", a)
        arrays[name] = f"{name}.npy"
    base_counts = {"edges_before_dedupe": st["edges_in"], "duplicates_removed": st["edges_in"] - st["edges"], "dedup_edges": st["edges"]}
    stage_fields = {"n_nodes": n_nodes, "n_rows": n_nodes, "n_cols": n_nodes, "nnz": st["edges"], "matrices": st["matrices"], "arrays": arrays}
    if direct:
        counts, fields = finalize_counts_direct(st, n_nodes, stage_dir, block_nnz), stage_fields
        fields["split"] = {"heldout_fraction": 0.0, "history_fraction": history_fraction, "seed": seed, "n_heldout": 0}
        return {**base_counts, **counts}, fields
    write_manifest(stage_dir, {**stage_fields, "source": "stage"})
    try:
        counts, fields = finalize_graph(
            stage_dir,
            out_dir,
            min_degree=min_degree,
            fixed_point=fixed_point,
            keep_self_links=keep_self_links,
            heldout_fraction=heldout_fraction,
            history_fraction=history_fraction,
            seed=seed,
            max_shard_nnz=max_shard_nnz,
            block_nnz=block_nnz,
            progress=progress,
        )
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    return {**base_counts, **counts}, fields


def finalize_counts_direct(st: dict[str, Any], n_nodes: int, root: Path, block_nnz: int) -> dict[str, Any]:
    """Step counts when the stage is the final dataset (no filter, no split)."""
    shards = [
        Shard(s["row_start"], s["row_stop"], _shard_csr(root, s, n_nodes)) for s in st["matrices"]["train_csr"]["shards"]
    ]
    n_self = sum(int((r == c).sum()) for _, _, r, c in _iter_blocks(shards, block_nnz))
    return {
        "self_links": n_self,
        "self_links_dropped": 0,
        "degree_filter_iterations": 0,
        "degree_filter_nodes_per_iteration": [],
        "final_nodes": n_nodes,
        "final_edges": st["edges"],
        "heldout_eligible_rows": None,
        "heldout_rows": 0,
        "train_nnz": st["edges"],
        "foldin_nnz": 0,
        "truth_nnz": 0,
    }


def _shard_csr(root: Path, s: Mapping[str, Any], n_cols: int):
    from alsx.data.matrix import CSR

    from alsx.webgraph.dataset import _ones

    ind = _load(root / s["indices"], np.int32)
    return CSR(indptr=_load(root / s["indptr"], np.int64), indices=ind, values=_ones(len(ind)), n_cols=n_cols)


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def build_webgraph(
    inputs: CCInputs | Mapping[str, Any] | str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tld: str | Sequence[str] | None = None,
    min_degree: int = 0,
    fixed_point: bool = False,
    keep_self_links: bool = True,
    heldout_fraction: float = 0.1,
    history_fraction: float = 0.8,
    seed: int = 0,
    chunk_edges: int = DEFAULT_CHUNK_EDGES,
    max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
    fill_budget_nnz: int = DEFAULT_FILL_BUDGET_NNZ,
    checksum: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> WebGraphDataset:
    """Builds one WebGraph variant (e.g. ``tld='de', min_degree=50``) as an on-disk dataset.

    Args:
      inputs: :class:`CCInputs` (or a dict with ``vertices`` and ``edges``) for
        Common Crawl's format; otherwise path(s)/glob(s) of a plain ``src dst``
        edge list of integer ids or URLs (whitespace- or tab-separated, ``#``
        comment lines at the top allowed, ``.gz`` read transparently).
      out_dir: dataset directory (must be empty or absent unless ``overwrite``).
      tld: keep only nodes whose TLD is listed (e.g. ``'de'`` or ``['de', 'in']``);
        an edge needs both ends kept.
      min_degree: K; a kept node needs >= K in-links and >= K out-links.
      fixed_point: iterate the degree filter until stable (ALX applies it once).
      keep_self_links: keep links u -> u (they are counted either way).
      heldout_fraction: share of rows held out of training (rows with >= 2 links).
      history_fraction: share of a held-out row's links given as history.
      seed: split seed.
      chunk_edges: edges per processing chunk (bounds memory).
      max_shard_nnz: entries per shard file.
      block_nnz: entries per sort / scan block.
      fill_budget_nnz: entries per in-RAM row bucket when building CSRs.
      checksum: record sha256 of every file in the manifest.
    Returns:
      The opened dataset.
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    _prepare_out(out_dir, overwrite)
    tlds = normalize_tlds(tld)
    tmp = out_dir / "_ingest"
    tmp.mkdir()
    try:
        ing = _ingest(inputs, tmp, tlds, block_size=1 << 24, progress=progress)
        node_arrays: dict[str, np.ndarray] = {"node_ids": ing.node_ids}
        n_chunks = -(-ing.n_spilled // chunk_edges)
        counts, fields = stage_and_finalize(
            _spill_chunks(ing, chunk_edges),
            len(ing.node_ids),
            out_dir,
            node_arrays=node_arrays,
            min_degree=min_degree,
            fixed_point=fixed_point,
            keep_self_links=keep_self_links,
            heldout_fraction=heldout_fraction,
            history_fraction=history_fraction,
            seed=seed,
            max_shard_nnz=max_shard_nnz,
            block_nnz=block_nnz,
            progress=progress,
            n_chunks=n_chunks,
            desc="stage",
            spill=False,  # the ingest spill is already on disk: replay it
            fill_budget_nnz=fill_budget_nnz,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ing.names is not None:
        _write_node_names(out_dir, ing.names, fields)
    params = {
        "inputs": _describe_inputs(inputs),
        "input_mode": ing.mode,
        "tld": tlds,
        "min_degree": min_degree,
        "fixed_point": fixed_point,
        "keep_self_links": keep_self_links,
        "heldout_fraction": heldout_fraction,
        "history_fraction": history_fraction,
        "seed": seed,
        "chunk_edges": chunk_edges,
        "max_shard_nnz": max_shard_nnz,
    }
    all_counts = {**ing.counts, **counts}
    write_manifest(
        out_dir,
        {**fields, "source": "build", "params": params, "counts": all_counts, "seconds": round(time.time() - t0, 3)},
        checksum=checksum,
    )
    return open_dataset(out_dir)


def _write_node_names(out_dir: Path, names: list[str], fields: dict[str, Any]) -> None:
    """URL mode: node names (parquet column ``name``) of the final nodes, in node order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.load(out_dir / fields["arrays"]["node_ids"])  # [n_nodes] first-appearance id of each final node
    pq.write_table(pa.table({"name": pa.array([names[i] for i in ids], type=pa.string())}), out_dir / "nodes.parquet")
    fields["arrays"]["node_names"] = "nodes.parquet"


def _describe_inputs(inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        inputs = CCInputs(**inputs)
    if isinstance(inputs, CCInputs):
        return {"format": "commoncrawl", "vertices": expand_paths(inputs.vertices), "edges": expand_paths(inputs.edges)}
    return {"format": "edgelist", "paths": expand_paths(inputs)}
