"""Synthetic web graphs: determinism by seed, target statistics; stats helpers; CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alsx.webgraph.cli import main as cli_main
from alsx.webgraph.dataset import open_dataset
from alsx.webgraph.stats import dataset_stats, edges_to_csr_pair, graph_stats, powerlaw_mle, reciprocity
from alsx.webgraph.synthetic import SynthModel, SynthSpec, synth_webgraph

CNR = Path("/work/shared/data/web_cnr2000.npz")


def _arrays(ds):
    return [np.asarray(ds.matrix(n).indices) for n in ("train_csr", "train_csc")] + [np.asarray(ds.train_csr().indptr)]


def test_same_seed_same_graph_other_seed_differs(tmp_path):
    kw = dict(n_nodes=2000, n_edges=30_000, chunk_edges=4000)
    a = synth_webgraph(tmp_path / "a", seed=7, **kw)
    b = synth_webgraph(tmp_path / "b", seed=7, **kw)
    c = synth_webgraph(tmp_path / "c", seed=8, **kw)
    assert a.manifest["params"]["n_chunks"] > 1
    for x, y in zip(_arrays(a), _arrays(b)):
        assert np.array_equal(x, y)
    assert np.array_equal(a.array("node_host"), b.array("node_host"))
    assert not np.array_equal(_arrays(a)[0], _arrays(c)[0])
    assert a.manifest["counts"] == b.manifest["counts"]


def test_chunks_are_pure_functions_of_seed_and_index():
    spec = SynthSpec(n_nodes=3000, n_edges=40_000, seed=1, chunk_edges=5000)
    m1, m2 = SynthModel(spec), SynthModel(spec)
    late = m2.chunk(3)  # order of generation does not matter
    for i in range(m1.n_chunks):
        s, d = m1.chunk(i)
        if i == 3:
            assert np.array_equal(s, late[0]) and np.array_equal(d, late[1])
        lo, hi = m1.node_bounds[i], m1.node_bounds[i + 1]
        # A chunk holds the rows of its node range: each arc starts there (row arc,
        # self-link) or ends there (reversed row arc).
        assert np.all(((s >= lo) & (s < hi)) | ((d >= lo) & (d < hi)))
        assert np.all((s[s == d] >= lo) & (s[s == d] < hi))


def test_statistics_match_targets_on_200k_edges(tmp_path):
    ds = synth_webgraph(tmp_path / "g", 20_000, 200_000, seed=0)
    st = dataset_stats(ds)
    c = ds.manifest["counts"]
    assert abs(st["reciprocity"]["fraction"] - 0.27) < 0.04
    assert st["self_loops"] > 0 and abs(st["self_loops"] / st["arcs"] - 0.027) < 0.01
    assert st["within_host"] > 0.5  # most links stay inside their host (locality 0.8)
    assert c["generated_edges"] - c["duplicates_removed"] == st["arcs"] == ds.manifest["nnz"]
    assert abs(st["arcs"] - 200_000) < 0.05 * 200_000  # arcs close to the request
    assert c["duplicates_removed"] < 0.02 * c["generated_edges"]
    # Heavy tails: maxima far above the mean and a finite fitted exponent.
    for k in ("out_degree", "in_degree"):
        assert st[k]["max"] > 20 * st[k]["mean"]
        assert 1.5 < st[k]["powerlaw"]["alpha"] < 4.0
    low = synth_webgraph(tmp_path / "low", 20_000, 200_000, seed=0, reciprocity=0.027, self_link_fraction=0.027)
    assert reciprocity(low.train_csr(), low.train_csc())["fraction"] < 0.1  # the knob works


def test_synth_with_filter_and_split(tmp_path):
    ds = synth_webgraph(tmp_path / "g", 3000, 40_000, seed=2, min_degree=3, heldout_fraction=0.1, keep_self_links=False)
    c = ds.manifest["counts"]
    assert c["final_nodes"] < 3000 and c["self_links_dropped"] == c["self_links"] > 0
    assert len(ds.heldout_rows) == round(0.1 * ds.n_nodes)
    assert c["train_nnz"] + c["foldin_nnz"] + c["truth_nnz"] == c["final_edges"]
    assert len(ds.array("node_host")) == ds.n_nodes  # per-node arrays follow the renumbering


def test_powerlaw_mle_recovers_exponent():
    rng = np.random.default_rng(0)
    x = rng.zipf(2.5, 200_000)
    fit = powerlaw_mle(x, xmin=5)
    assert abs(fit["alpha"] - 2.5) < 0.1
    auto = powerlaw_mle(x)
    assert abs(auto["alpha"] - 2.5) < 0.15 and auto["n_tail"] >= 50


def test_reciprocity_and_self_loops_by_hand():
    # 0->1, 1->0 (a reciprocated pair), 1->2 (not), 2->2 (self-link: its own reverse).
    csr, csc = edges_to_csr_pair(np.array([0, 1, 1, 2]), np.array([1, 0, 2, 2]), 3)
    r = reciprocity(csr, csc, block_nnz=1)
    assert r["reciprocated"] == 3 and r["fraction"] == 0.75 and r["fraction_excluding_self"] == 0.5
    st = graph_stats(csr, csc)
    assert st["self_loops"] == 1 and st["out_degree"]["max"] == 2 and st["in_degree"]["zeros"] == 0


@pytest.mark.skipif(not CNR.exists(), reason="shared data web_cnr2000.npz not present")
def test_stats_reproduce_cnr2000_figures():
    z = np.load(CNR)
    csr, csc = edges_to_csr_pair(z["rows"], z["cols"], int(z["shape"][0]))
    st = graph_stats(csr, csc)
    # Published: 325,557 nodes, 3,216,152 arcs, 87,442 self-loops, 27.0 % reciprocated, 78,056 empty rows.
    assert (st["nodes"], st["arcs"], st["self_loops"]) == (325_557, 3_216_152, 87_442)
    assert round(st["reciprocity"]["fraction"], 3) == 0.270
    assert st["out_degree"]["zeros"] == 78_056 and st["in_degree"]["zeros"] == 0


def test_cli_synth_and_stats(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(
        ["webgraph", "synth", "--nodes", "1000", "--edges", "1e4", "--out", str(out), "--seed", "3", "--no-progress"]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    ds = open_dataset(out)
    assert printed["n_nodes"] == ds.n_nodes == 1000 and ds.manifest["params"]["seed"] == 3
    assert cli_main(["webgraph", "stats", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["arcs"] == ds.manifest["nnz"]


def test_spec_validation():
    with pytest.raises(ValueError, match="locality"):
        SynthSpec(n_nodes=10, n_edges=10, locality=1.5)
    with pytest.raises(ValueError, match="alpha_out"):
        SynthSpec(n_nodes=10, n_edges=10, alpha_out=1.0)
