"""WebGraph build: Common Crawl fixtures, filters with hand-computed counts, split, on-disk round trip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from alsx.webgraph.build import CCInputs, build_webgraph, history_counts, select_heldout
from alsx.webgraph.dataset import ExternalCSRBuilder, SequentialCSRWriter

# ---------------------------------------------------------------------------
# fixtures

# Vertices in Common Crawl's host-graph format (id TAB reversed host name).
HAND_VERTICES = [
    (0, "de.a.www"),
    (1, "de.b.www"),
    (2, "de.c.www"),
    (3, "de.d.www"),
    (4, "com.x.www"),
    (5, "in.y.www"),
    (6, "DE.z.www"),  # upper case still counts as .de; has no links
]
# 10 lines: a .de chain 0<->1 -> 2 -> 3, a repeated line, a self-link and links
# touching .com / .in nodes.
HAND_EDGES = [(0, 1), (1, 0), (1, 2), (2, 3), (0, 4), (4, 0), (5, 1), (1, 2), (0, 0), (5, 4)]


def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def write_cc(tmp: Path, vertices, edges, *, extra_cols: bool = False, n_edge_files: int = 1) -> CCInputs:
    """Common Crawl layout: gzip vertices/edges files (edges possibly split over several files)."""
    tmp.mkdir(parents=True, exist_ok=True)
    vlines = [f"{i}\t{h}" + ("\t7" if extra_cols else "") for i, h in vertices]  # domain graph: extra count column
    _write_gz(tmp / "vertices.txt.gz", vlines)
    parts = np.array_split(np.arange(len(edges)), n_edge_files)
    for k, idx in enumerate(parts):
        _write_gz(tmp / f"edges-{k:03d}.txt.gz", [f"{edges[i][0]}\t{edges[i][1]}" for i in idx])
    return CCInputs(vertices=str(tmp / "vertices.txt.gz"), edges=str(tmp / "edges-*.txt.gz"))


@pytest.fixture
def hand(tmp_path: Path) -> CCInputs:
    return write_cc(tmp_path / "cc", HAND_VERTICES, HAND_EDGES)


def random_cc(tmp: Path, n: int = 400, m: int = 6000, seed: int = 0, **kw) -> tuple[CCInputs, np.ndarray]:
    rng = np.random.default_rng(seed)
    tlds = ["de", "in", "com"]
    vertices = [(i, f"{tlds[i % 3]}.site{i // 3}.www") for i in range(n)]
    # Skewed sources/targets so degrees vary; repeats and self-links occur.
    src = np.where(rng.random(m) < 0.3, rng.zipf(1.6, m) % n, rng.integers(0, n, m))
    e = np.stack([src, rng.integers(0, n, m)], axis=1)
    return write_cc(tmp, vertices, [tuple(x) for x in e], **kw), e


def dense(csr, n_rows: int | None = None) -> np.ndarray:
    n_rows = csr.n_rows if n_rows is None else n_rows
    return sp.csr_matrix(
        (np.ones(csr.nnz), np.asarray(csr.indices), np.asarray(csr.indptr)), shape=(n_rows, csr.n_cols)
    ).toarray()


def to_scipy(csr) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.ones(csr.nnz), np.asarray(csr.indices), np.asarray(csr.indptr)), shape=(csr.n_rows, csr.n_cols)
    )


# ---------------------------------------------------------------------------
# filters: hand-computed counts


def test_no_filter_counts_and_matrix(hand, tmp_path):
    ds = build_webgraph(hand, tmp_path / "out", heldout_fraction=0.0)
    c = ds.manifest["counts"]
    # 7 vertices, 10 lines; one repeated line (1->2) -> 9 distinct links, one self-link (0->0).
    assert (c["input_vertices"], c["input_edges"], c["tld_nodes"], c["tld_edges"]) == (7, 10, 7, 10)
    assert (c["duplicates_removed"], c["dedup_edges"], c["self_links"]) == (1, 9, 1)
    assert ds.n_nodes == 7 and ds.manifest["nnz"] == 9
    expect = np.zeros((7, 7))
    for u, v in set(HAND_EDGES):
        expect[u, v] = 1
    assert np.array_equal(dense(ds.train_csr()), expect)
    assert np.array_equal(dense(ds.train_csc()), expect.T)


def test_tld_filter_counts(hand, tmp_path):
    ds = build_webgraph(hand, tmp_path / "out", tld="de", heldout_fraction=0.0)
    c = ds.manifest["counts"]
    # .de nodes: 0, 1, 2, 3 and 6 (upper-case "DE") -> 5 nodes.
    # Lines with both ends .de: 0->1, 1->0, 1->2, 2->3, 1->2 (again), 0->0 -> 6, 5 distinct.
    assert (c["tld_nodes"], c["tld_edges"], c["dedup_edges"], c["final_edges"]) == (5, 6, 5, 5)
    # Dense renumbering keeps id order: 0,1,2,3,6 -> 0..4; node 6 becomes the empty row 4.
    assert list(ds.array("node_ids")) == [0, 1, 2, 3, 6]
    expect = np.zeros((5, 5))
    for u, v in [(0, 1), (1, 0), (1, 2), (2, 3), (0, 0)]:
        expect[u, v] = 1
    assert np.array_equal(dense(ds.train_csr()), expect)
    # Adding .in brings node 5 and its link 5->1: 6 nodes, 6 distinct links.
    ds2 = build_webgraph(hand, tmp_path / "out2", tld=[".de", "IN"], heldout_fraction=0.0)
    assert (ds2.manifest["counts"]["tld_nodes"], ds2.manifest["counts"]["final_edges"]) == (6, 6)
    assert ds2.manifest["params"]["tld"] == ["de", "in"]


def test_degree_filter_one_pass_vs_fixed_point(hand, tmp_path):
    # K = 1 on the .de graph {0->1, 1->0, 1->2, 2->3, 0->0}:
    #   out/in degrees: 0: 2/2, 1: 2/1, 2: 1/1, 3: 0/1, 6: 0/0  -> keep {0, 1, 2}.
    # One pass (ALX) keeps the links among them: 0->1, 1->0, 1->2, 0->0 (4);
    # node 2 is left with out-degree 0 < K.
    one = build_webgraph(hand, tmp_path / "one", tld="de", min_degree=1, heldout_fraction=0.0)
    c1 = one.manifest["counts"]
    assert (c1["final_nodes"], c1["final_edges"], c1["degree_filter_iterations"]) == (3, 4, 1)
    assert c1["degree_filter_nodes_per_iteration"] == [3]
    assert np.diff(np.asarray(one.train_csr().indptr))[2] == 0
    # Fixed point: second pass drops node 2 -> {0, 1} with 0->1, 1->0, 0->0; third pass is stable.
    fp = build_webgraph(hand, tmp_path / "fp", tld="de", min_degree=1, fixed_point=True, heldout_fraction=0.0)
    c2 = fp.manifest["counts"]
    assert (c2["final_nodes"], c2["final_edges"]) == (2, 3)
    assert c2["degree_filter_nodes_per_iteration"] == [3, 2]
    out_deg = np.diff(np.asarray(fp.train_csr().indptr))
    in_deg = np.diff(np.asarray(fp.train_csc().indptr))
    assert out_deg.min() >= 1 and in_deg.min() >= 1  # the fixed point meets K everywhere
    assert list(fp.array("node_ids")) == [0, 1]


def test_self_link_flag(hand, tmp_path):
    keep = build_webgraph(hand, tmp_path / "keep", tld="de", heldout_fraction=0.0)
    drop = build_webgraph(hand, tmp_path / "drop", tld="de", keep_self_links=False, heldout_fraction=0.0)
    ck, cd = keep.manifest["counts"], drop.manifest["counts"]
    assert ck["self_links"] == cd["self_links"] == 1  # counted either way
    assert (ck["self_links_dropped"], cd["self_links_dropped"]) == (0, 1)
    assert (ck["final_edges"], cd["final_edges"]) == (5, 4)
    a = dense(drop.train_csr())
    assert np.trace(a) == 0 and np.trace(dense(keep.train_csr())) == 1
    # Dropped self-links do not count as degree: with K = 2, node 0 (out {1, 0}, in {1, 0})
    # passes only while its self-link counts.
    k2 = build_webgraph(hand, tmp_path / "k2", tld="de", min_degree=2, heldout_fraction=0.0)
    k2d = build_webgraph(hand, tmp_path / "k2d", tld="de", min_degree=2, keep_self_links=False, heldout_fraction=0.0)
    assert k2.manifest["counts"]["degree_filter_nodes_per_iteration"] == [1]  # node 0 only
    assert k2d.manifest["counts"]["degree_filter_nodes_per_iteration"] == [0]


def test_domain_graph_extra_columns_and_multiple_edge_files(tmp_path):
    a = build_webgraph(
        write_cc(tmp_path / "a", HAND_VERTICES, HAND_EDGES), tmp_path / "oa", tld="de", heldout_fraction=0.0
    )
    b = build_webgraph(
        write_cc(tmp_path / "b", HAND_VERTICES, HAND_EDGES, extra_cols=True, n_edge_files=3),
        tmp_path / "ob",
        tld="de",
        heldout_fraction=0.0,
    )
    assert len(b.manifest["params"]["inputs"]["edges"]) == 3
    assert a.manifest["counts"] == b.manifest["counts"]
    assert np.array_equal(dense(a.train_csr()), dense(b.train_csr()))


# ---------------------------------------------------------------------------
# held-out split


def test_split_invariants(tmp_path):
    cc, _ = random_cc(tmp_path / "cc")
    full = build_webgraph(cc, tmp_path / "full", heldout_fraction=0.0)
    ds = build_webgraph(cc, tmp_path / "split", heldout_fraction=0.2, history_fraction=0.8, seed=3)
    n = ds.n_nodes
    G = to_scipy(full.train_csr())
    ho = np.asarray(ds.heldout_rows)
    assert len(ho) == round(0.2 * n) and np.all(np.diff(ho) > 0)
    assert np.all(np.diff(G.indptr)[ho] >= 2)  # only rows with >= 2 links are held out
    train = to_scipy(ds.train_csr())
    assert np.all(np.diff(train.indptr)[ho] == 0)  # held-out rows never train ...
    assert not np.isin(np.asarray(ds.train_csc().indices), ho).any()  # ... in either orientation
    assert (to_scipy(ds.train_csc()) != train.T).nnz == 0
    rest = np.setdiff1d(np.arange(n), ho)
    assert (train[rest] != G[rest]).nnz == 0  # other rows are untouched
    hist, truth = to_scipy(ds.foldin_csr()), to_scipy(ds.truth_csr())
    assert hist.shape == truth.shape == (len(ho), n)
    assert hist.multiply(truth).nnz == 0  # disjoint
    assert ((hist + truth) != G[ho]).nnz == 0  # history + truth = the row
    d = np.diff(G.indptr)[ho]
    assert np.array_equal(np.diff(hist.indptr), history_counts(d, 0.8))
    assert np.diff(truth.indptr).min() >= 1 and np.diff(hist.indptr).min() >= 1
    c = ds.manifest["counts"]
    assert c["train_nnz"] + c["foldin_nnz"] + c["truth_nnz"] == c["final_edges"] == G.nnz
    # Seeded: same seed -> same split, another seed -> another one.
    again = build_webgraph(cc, tmp_path / "again", heldout_fraction=0.2, seed=3)
    other = build_webgraph(cc, tmp_path / "other", heldout_fraction=0.2, seed=4)
    assert np.array_equal(again.heldout_rows, ho)
    assert np.array_equal(np.asarray(again.foldin_csr().indices), np.asarray(ds.foldin_csr().indices))
    assert not np.array_equal(other.heldout_rows, ho)


def test_select_heldout_and_history_counts_rules():
    deg = np.array([0, 1, 2, 5, 9, 1, 3])
    ho = select_heldout(deg, 0.5, seed=0)
    assert len(ho) == 4 and set(ho) <= {2, 3, 4, 6}  # round(0.5 * 7) = 4 of the 4 rows with degree >= 2
    assert len(select_heldout(deg, 0.9, seed=0)) == 4  # capped by the eligible rows
    assert list(history_counts(np.array([2, 3, 5, 10]), 0.8)) == [1, 2, 4, 8]  # round(0.8 d) in [1, d - 1]


# ---------------------------------------------------------------------------
# on-disk format


def _edge_list(tmp: Path, e: np.ndarray, sep: str = " ", comment: bool = True) -> Path:
    p = tmp / "edges.txt"
    lines = (["# a SNAP-style header", "# FromNodeId ToNodeId"] if comment else []) + [f"{a}{sep}{b}" for a, b in e]
    p.write_text("\n".join(lines) + "\n")
    return p


def test_round_trip_memmap_equals_scipy(tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    e = rng.integers(0, n, size=(8000, 2))
    e[:, 1] = (e[:, 0] + rng.zipf(1.5, len(e))) % n  # varied row lengths
    ds = build_webgraph(_edge_list(tmp_path, e), tmp_path / "ds", heldout_fraction=0.0, max_shard_nnz=1000)
    ref = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    ref.sum_duplicates()
    ref.sort_indices()
    present = np.unique(e)  # nodes of a plain edge list are the ids that occur
    ref = ref[present][:, present]
    assert ds.manifest["counts"]["input_vertices"] == len(present)
    shards = ds.shards("train_csr")
    assert len(shards) > 1  # several row ranges ...
    assert all(isinstance(s.csr.indices, np.memmap) for s in shards)  # ... each memory-mapped
    assert shards[0].row_start == 0 and shards[-1].row_stop == ds.n_nodes
    assert all(a.row_stop == b.row_start for a, b in zip(shards, shards[1:]))
    assert all(s.csr.nnz <= 1000 for s in shards)
    csr = ds.train_csr()
    assert np.array_equal(csr.indptr, ref.indptr) and np.array_equal(csr.indices, ref.indices)
    assert csr.indices.dtype == np.int32 and csr.indptr.dtype == np.int64 and csr.values.dtype == np.float32
    assert np.all(csr.values == 1.0)
    t = ref.T.tocsr()
    t.sort_indices()
    assert np.array_equal(ds.train_csc().indptr, t.indptr) and np.array_equal(ds.train_csc().indices, t.indices)
    # Single shard: the CSR arrays are the memory maps themselves (no full read).
    one = build_webgraph(_edge_list(tmp_path, e), tmp_path / "one", heldout_fraction=0.0)
    assert isinstance(one.train_csr().indices, np.memmap) and isinstance(one.train_csr().indptr, np.memmap)
    assert np.array_equal(one.train_csr().indices, ref.indices)


def test_manifest_contents_and_verify(hand, tmp_path):
    ds = build_webgraph(hand, tmp_path / "out", tld="de", checksum=True, heldout_fraction=0.0)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["format"] == "alsx-webgraph" and m["format_version"] == 1
    assert (m["n_nodes"], m["n_rows"], m["n_cols"], m["nnz"]) == (5, 5, 5, 5)
    assert m["params"]["tld"] == ["de"] and m["params"]["min_degree"] == 0
    files = {f["path"]: f for f in m["files"]}
    assert "train_csr/shard_00000.indices.npy" in files and "heldout_rows.npy" in files
    assert all(len(f["sha256"]) == 64 for f in files.values())
    assert not any(p.startswith(("_stage", "_ingest")) for p in files)  # temporaries are gone
    ds.verify()
    p = tmp_path / "out" / "train_csr" / "shard_00000.indices.npy"
    p.write_bytes(p.read_bytes()[:-4])  # truncate one entry
    with pytest.raises(ValueError, match="bytes"):
        ds.verify()
    with pytest.raises(FileExistsError):
        build_webgraph(hand, tmp_path / "out")


def test_chunked_build_equals_unchunked(tmp_path):
    cc, _ = random_cc(tmp_path / "cc", n_edge_files=2)
    kw = dict(tld=["de", "in"], min_degree=3, heldout_fraction=0.1, seed=1)
    big = build_webgraph(cc, tmp_path / "big", **kw)
    small = build_webgraph(
        cc, tmp_path / "small", chunk_edges=7, block_nnz=13, max_shard_nnz=50, fill_budget_nnz=20, **kw
    )
    assert len(small.shards("train_csr")) > 1
    assert big.manifest["counts"] == small.manifest["counts"]
    for name in ("train_csr", "train_csc", "foldin_csr", "truth_csr"):
        a, b = big.matrix(name), small.matrix(name)
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices), name
    assert np.array_equal(big.heldout_rows, small.heldout_rows)


def test_url_edge_list_with_tld(tmp_path):
    p = tmp_path / "urls.tsv"
    p.write_text(
        "http://www.a.de/x\thttps://b.de:8080/y?q=1\n"
        "https://b.de:8080/y?q=1\thttp://www.a.de/x\n"
        "http://www.a.de/x\thttp://c.in/\n"
        "http://c.in/\thttp://WWW.D.DE./z\n"
        "http://www.a.de/x\thttps://b.de:8080/y?q=1\n"
    )
    ds = build_webgraph(str(p), tmp_path / "out", tld="de", heldout_fraction=0.0)
    c = ds.manifest["counts"]
    # 4 distinct URLs; .de: a.de/x, b.de/y, D.DE./z -> 3 nodes; links with both ends .de:
    # lines 1, 2, 5 (5 repeats 1) -> 3 lines, 2 distinct.
    assert (c["input_vertices"], c["tld_nodes"], c["tld_edges"], c["final_edges"]) == (4, 3, 3, 2)
    names = ds.node_names()
    assert names == sorted(names) and len(names) == 3  # nodes numbered in URL order
    a, b = names.index("http://www.a.de/x"), names.index("https://b.de:8080/y?q=1")
    assert dense(ds.train_csr())[a, b] == 1 and dense(ds.train_csr())[b, a] == 1


def test_int_edge_list_rejects_tld(tmp_path):
    with pytest.raises(ValueError, match="TLD"):
        build_webgraph(_edge_list(tmp_path, np.array([[1, 2]])), tmp_path / "out", tld="de")


def test_bucketed_fill_equals_memmap_fill(tmp_path):
    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, 50, 3000), rng.integers(0, 70, 3000)
    chunks = [(rows[i : i + 200], cols[i : i + 200]) for i in range(0, 3000, 200)]
    a = ExternalCSRBuilder(tmp_path / "a", 50, 70, max_shard_nnz=1000, block_nnz=64)
    b = ExternalCSRBuilder(tmp_path / "b", 50, 70, max_shard_nnz=1000, block_nnz=64)
    for x in (a, b):
        x.count(rows)
        x.allocate()
    for r, c in chunks:
        a.fill(r, c)
    ia = a.finalize()
    plan = b.bucket_plan(150)
    assert len(plan) > len(ia["shards"])  # several RAM buckets per shard
    for bucket in plan:
        b.fill_bucket(bucket, iter(chunks))
    ib = b.finalize_buckets()
    assert (ia["nnz"], ia["nnz_before_dedupe"]) == (ib["nnz"], ib["nnz_before_dedupe"])
    assert ia["nnz"] < 3000  # repeats were removed
    assert len(ia["shards"]) == len(ib["shards"]) > 1
    for sa, sb in zip(ia["shards"], ib["shards"]):
        for key in ("indptr", "indices"):
            assert np.array_equal(np.load(tmp_path / sa[key]), np.load(tmp_path / sb[key])), key


def test_external_builder_dedupes_and_checks_passes(tmp_path):
    b = ExternalCSRBuilder(tmp_path / "m", 4, 6, max_shard_nnz=3, block_nnz=2)
    rows, cols = np.array([3, 0, 0, 3, 1, 0]), np.array([5, 2, 1, 5, 0, 2])
    b.count(rows)
    b.allocate()
    b.fill(rows[:4], cols[:4])
    b.fill(rows[4:], cols[4:])
    info = b.finalize()
    assert (info["nnz_before_dedupe"], info["nnz"]) == (6, 4)  # (0,2) and (3,5) repeated
    assert len(info["shards"]) > 1
    bad = ExternalCSRBuilder(tmp_path / "bad", 2, 2)
    bad.count(np.array([0]))
    bad.allocate()
    with pytest.raises(RuntimeError, match="more entries"):
        bad.fill(np.array([1]), np.array([0]))


def test_sequential_writer_cuts_shards_at_rows(tmp_path):
    w = SequentialCSRWriter(tmp_path / "s", 10, max_shard_nnz=4)
    w.append(np.array([2, 3, 0, 5]), np.array([1, 2, 0, 4, 9, 0, 1, 2, 3, 4], dtype=np.int32))
    info = w.close()
    assert info["n_rows"] == 4 and info["nnz"] == 10
    # rows of 2 | 3, 0 | 5 (a single row larger than a shard gets its own)
    assert [(s["row_start"], s["row_stop"], s["nnz"]) for s in info["shards"]] == [(0, 1, 2), (1, 3, 3), (3, 4, 5)]
